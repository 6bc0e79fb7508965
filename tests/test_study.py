"""User study: the questionnaire page hides which method is which, and the tally counts what was clicked."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from seminft_bench.bench.stats import wilson_interval
from seminft_bench.bench.study import StudyError, format_tally, make_study, tally

METHODS = ("semiNFT", "neuralpreset", "capvstnet")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _png(path: Path, pixels: np.ndarray, text: str = "") -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", text)  # metadata naming the method: the study must drop it
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=info)


@pytest.fixture
def run_dir(tmp_path):
    """A run of 8 samples, 96×64; sample s7 lacks one method's output, so 7 items are complete."""
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    for i in range(8):
        sample = f"s{i}"
        source = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        _png(run / "inputs" / "source" / f"{sample}.png", source)
        _png(run / "inputs" / "reference" / f"{sample}.png", rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
        for j, method in enumerate(METHODS):
            if sample == "s7" and method == METHODS[2]:
                continue
            size = (128, 128) if j == 1 else (96, 64)  # a method working at its own resolution
            output = np.asarray(Image.fromarray(source // (j + 1)).resize(size))
            _png(run / "outputs" / method / f"{sample}.png", output, text=method)
    return run


def _key(study: Path) -> dict:
    return json.loads((study / "key.json").read_text())


def _answer_file(path: Path, study: str, participant: str, answers: list[dict], saved: str = "") -> Path:
    data = {"participant": participant, "study": study, "answers": answers}
    if saved:
        data["saved"] = saved
    path.write_text(json.dumps(data))
    return path


def _answers(key: dict, q1: str, q2) -> list[dict]:
    """Every item answered: q1 picks method ``q1``; q2 picks ``q2(item index)``."""
    by_method = [{method: label for label, method in item["options"].items()} for item in key["items"]]
    return [{"item": item["item"], "q1": options[q1], "q2": options[q2(i)]}
            for i, (item, options) in enumerate(zip(key["items"], by_method))]


def test_page_hides_methods_and_shuffles_options(run_dir, tmp_path):
    page = make_study(run_dir, METHODS, tmp_path / "study", max_side=48)
    study = tmp_path / "study"
    key = _key(study)
    assert page == study / "page" / "index.html"
    assert [item["sample"] for item in key["items"]] == [f"s{i}" for i in range(7)]
    assert key["left_out"] == {"s7": [METHODS[2]]}

    public = [path for path in (study / "page").rglob("*") if path.is_file()]
    for path in public:
        content = (path.relative_to(study).as_posix() + "\n").encode() + path.read_bytes()
        for method in METHODS:
            assert method.lower().encode() not in content.lower(), f"{method} shows in {path}"
    html = page.read_text()
    assert "key.json" not in html and "http" not in html  # no link to the key, no network
    assert html.count('<section class="item"') == 7 and 'name="7-q2" value="C"' in html

    orders = {tuple(item["options"].values()) for item in key["items"]}
    assert len(orders) > 1 and all(sorted(order) == sorted(METHODS) for order in orders)
    with Image.open(study / "page" / "images" / "1-reference.jpg") as reference:
        assert reference.size == (48, 29)
    for label in "ABC":  # every option at the source's displayed size, whatever the method's resolution
        with Image.open(study / "page" / "images" / f"1-{label}.jpg") as option:
            assert option.size == (48, 32)


def test_make_study_is_deterministic_and_limits(run_dir, tmp_path):
    make_study(run_dir, METHODS, tmp_path / "a", seed=3, limit=4)
    make_study(run_dir, METHODS, tmp_path / "b", seed=3, limit=4)
    make_study(run_dir, METHODS, tmp_path / "c", seed=4, limit=4)
    a, b, c = (_key(tmp_path / name) for name in "abc")
    assert a == b and len(a["items"]) == 4
    assert (tmp_path / "a" / "page" / "index.html").read_text() == (tmp_path / "b" / "page" / "index.html").read_text()
    assert c["study"] != a["study"]

    make_study(run_dir, METHODS, tmp_path / "a", seed=3, limit=2)  # remade smaller: no stale images
    assert len(list((tmp_path / "a" / "page" / "images").iterdir())) == 2 * 5


def test_make_study_errors(run_dir, tmp_path):
    with pytest.raises(StudyError, match="no outputs for method.*nano"):
        make_study(run_dir, [*METHODS, "nano"], tmp_path / "s")
    with pytest.raises(StudyError, match="at least 2"):
        make_study(run_dir, METHODS[:1], tmp_path / "s")
    for sample in ("s0", "s1", "s2", "s3", "s4", "s5", "s6"):
        (run_dir / "outputs" / METHODS[2] / f"{sample}.png").unlink()
    with pytest.raises(StudyError, match=f"no sample has.*s0: {METHODS[2]}"):
        make_study(run_dir, METHODS, tmp_path / "s")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="not a study folder"):
        make_study(run_dir, METHODS[:2], tmp_path / "busy")


def test_wilson_interval_known_values():
    # Reference values: scipy.stats.binomtest(k, n).proportion_ci(method="wilson").
    assert wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.7224672, 1.0), abs=1e-6)
    assert wilson_interval(36, 72) == pytest.approx((0.3874709, 0.6125291), abs=1e-6)


def test_tally_counts_ratios_and_last_file_per_participant(run_dir, tmp_path):
    study = tmp_path / "study"
    make_study(run_dir, METHODS, study)
    key = _key(study)
    answers = study / "answers"
    assert answers.is_dir()  # made with the study, for the downloaded files
    files = [
        _answer_file(answers / "p1.json", key["study"], "p1", _answers(key, METHODS[0], lambda i: METHODS[i % 2])),
        _answer_file(answers / "p2.json", key["study"], "p2", _answers(key, METHODS[1], lambda i: METHODS[2]),
                     saved="2025-01-02T10:00:00.000Z"),
        # p2 re-downloaded: the older file (saved earlier) is the one replaced, whatever the argument order
        _answer_file(answers / "p2 (1).json", key["study"], "p2", _answers(key, METHODS[0], lambda i: METHODS[0]),
                     saved="2025-01-01T10:00:00.000Z"),
    ]
    result = tally(study, files)
    assert result.participants == ("p1", "p2") and result.items == 7
    assert result.replaced == (files[2],)
    q1 = result.selection("q1", METHODS[0])
    assert (q1.count, q1.total, q1.ratio) == (7, 14, 0.5)
    assert (q1.low, q1.high) == pytest.approx(wilson_interval(7, 14))
    assert result.selection("q1", METHODS[1]).count == 7
    assert [result.selection("q2", m).count for m in METHODS] == [4, 3, 7]
    assert sum(result.selection("q2", m).ratio for m in METHODS) == pytest.approx(1)

    table = format_tally(result)
    assert "2 participant(s), 7 item(s), 14 choices per question" in table
    assert "Wilson" in table and "p2 (1).json" in table
    assert f"{METHODS[2]:<12}      7   0.500  [0.268, 0.732]" in table


def test_tally_rejects_bad_files(run_dir, tmp_path):
    study = tmp_path / "study"
    make_study(run_dir, METHODS, study)
    key = _key(study)
    good = _answers(key, METHODS[0], lambda i: METHODS[1])
    cases = {
        "other study": (dict(study="0123456789ab", participant="p", answers=good), "study '0123456789ab', not"),
        "unknown item": (dict(participant="p", answers=[*good, {"item": "99", "q1": "A", "q2": "A"}]),
                         "unknown item '99'"),
        "unknown option": (dict(participant="p", answers=[{"item": "1", "q1": "D", "q2": "A"}]),
                           "item 1, q1: 'D' is not one of its options A, B, C"),
        "twice": (dict(participant="p", answers=[good[0], good[0]]), "item 1 is answered twice"),
        "no participant": (dict(participant=" ", answers=good), "no participant id"),
        "empty": (dict(participant="p", answers=[]), "no answers in"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"study": key["study"], **data}))
        with pytest.raises(StudyError, match=message) as error:
            tally(study, [path])
        assert str(path) in str(error.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(StudyError, match="broken.json: not a readable JSON"):
        tally(study, [broken])
    with pytest.raises(StudyError, match="no answer files"):
        tally(study, [])
    with pytest.raises(StudyError, match="key.json"):
        tally(tmp_path, [broken])


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium chromium-driver)")
@pytest.mark.timeout(120)
def test_page_in_headless_chromium(run_dir, tmp_path):
    """Answer every item in a real browser, download the answers and tally them."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    study = tmp_path / "study"
    page = make_study(run_dir, METHODS, study)
    key = _key(study)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
    })
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    def pick(answers):
        for answer in answers:
            for q in ("q1", "q2"):
                driver.find_element(By.CSS_SELECTOR, f'input[name="{answer["item"]}-{q}"][value="{answer[q]}"]').click()

    expected = _answers(key, METHODS[0], lambda i: METHODS[1 + i % 2])
    try:
        driver.get(page.as_uri())
        driver.find_element(By.ID, "download").click()
        assert "7 item(s) still need both answers" in driver.find_element(By.ID, "message").text
        pick(expected[:3])
        driver.find_element(By.ID, "participant").send_keys("alice")
        # the keys reach the page asynchronously: reload once its input handler has saved them
        WebDriverWait(driver, 10).until(lambda d: "alice" in d.execute_script("return Object.values(localStorage).join()"))
        driver.refresh()  # answers so far survive a reload
        assert driver.find_element(By.ID, "participant").get_attribute("value") == "alice"
        assert driver.find_element(By.ID, "progress-text").text == "3 of 7 items answered"
        pick(expected[3:])
        assert driver.find_element(By.ID, "progress-text").text == "7 of 7 items answered"
        driver.find_element(By.ID, "download").click()
        deadline = time.monotonic() + 20
        while not (saved := list(downloads.glob("*.json"))) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        driver.quit()
    assert [path.name for path in saved] == [f"answers-{key['study']}-alice.json"]
    data = json.loads(saved[0].read_text())
    assert data["answers"] == expected and data["participant"] == "alice"

    result = tally(study, saved)
    assert result.participants == ("alice",)
    assert [result.selection("q1", m).ratio for m in METHODS] == [1, 0, 0]
    assert [result.selection("q2", m).count for m in METHODS] == [0, 4, 3]


def test_cli_makes_the_study_and_tallies_answers_found_below_it(run_dir, tmp_path):
    from typer.testing import CliRunner

    from seminft_bench.cli import bench

    study = tmp_path / "study"
    made = CliRunner().invoke(bench.app, ["study", "make", str(run_dir), "--methods", ",".join(METHODS), "--out", str(study)])
    assert made.exit_code == 0, made.output
    key = _key(study)
    answers = _answer_file(study / "answers" / "p1.json", key["study"], "p1", _answers(key, METHODS[0], lambda i: METHODS[1]))
    tallied = CliRunner().invoke(bench.app, ["study", "tally", str(answers)])
    assert tallied.exit_code == 0, tallied.output
    assert METHODS[0] in tallied.output and "1.000" in tallied.output
    stray = _answer_file(tmp_path / "elsewhere.json", key["study"], "p2", [])
    assert CliRunner().invoke(bench.app, ["study", "tally", str(stray)]).exit_code == 2
