"use strict";
// The page's items, options and study id live in the HTML; this script only records choices,
// keeps them in localStorage across reloads, shows progress and saves the answers as JSON.
(function () {
  const study = document.body.dataset.study;
  const storageKey = "colour-study:" + study;
  const questions = ["q1", "q2"];
  const items = Array.from(document.querySelectorAll("section.item"));
  const participant = document.getElementById("participant");
  const message = document.getElementById("message");

  function radio(item, question, value) {
    const checked = value === undefined ? ":checked" : '[value="' + value + '"]';
    return document.querySelector('input[name="' + item + "-" + question + '"]' + checked);
  }

  function answers() {
    return items.map(function (section) {
      const answer = { item: section.dataset.item };
      questions.forEach(function (q) {
        const input = radio(section.dataset.item, q);
        answer[q] = input ? input.value : null;
      });
      return answer;
    });
  }

  function complete(answer) {
    return questions.every(function (q) { return answer[q] !== null; });
  }

  function say(text, warning) {
    message.textContent = text;
    message.className = warning ? "warning" : "";
  }

  function save() {
    try {
      localStorage.setItem(storageKey, JSON.stringify({ participant: participant.value, answers: answers() }));
    } catch (error) {
      say("This browser does not keep answers across reloads; finish before closing the page.", true);
    }
  }

  function restore() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(storageKey));
    } catch (error) {
      return;
    }
    if (!saved) return;
    participant.value = saved.participant || "";
    (saved.answers || []).forEach(function (answer) {
      questions.forEach(function (q) {
        const input = answer[q] ? radio(answer.item, q, answer[q]) : null;
        if (input) input.checked = true;
      });
    });
  }

  function showProgress() {
    const all = answers();
    const done = all.filter(complete).length;
    document.getElementById("progress").value = done;
    document.getElementById("progress-text").textContent = done + " of " + items.length + " items answered";
    items.forEach(function (section, i) { section.classList.toggle("done", complete(all[i])); });
  }

  function download() {
    const all = answers();
    const id = participant.value.trim();
    const missing = all.filter(function (answer) { return !complete(answer); });
    if (missing.length) {
      const names = missing.slice(0, 10).map(function (answer) { return answer.item; }).join(", ");
      say("Not saved: " + missing.length + " item(s) still need both answers (item " + names + ").", true);
      document.getElementById("item-" + missing[0].item).scrollIntoView();
      return;
    }
    if (!id) {
      say("Not saved: enter your participant ID first.", true);
      participant.focus();
      return;
    }
    const data = { participant: id, study: study, saved: new Date().toISOString(), answers: all };
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
    link.download = "answers-" + study + "-" + id.replace(/[^A-Za-z0-9_-]+/g, "_") + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    say("Saved " + link.download + ". Please send this file to the person running the study.", false);
  }

  restore();
  showProgress();
  document.addEventListener("change", function () { save(); showProgress(); });
  participant.addEventListener("input", save);
  document.getElementById("download").addEventListener("click", download);
})();
