"""What the pipeline computes: stages, and the helpers they are built from.

- `tasks/stages/`: one module per stage (fetch, tokenize, teacher, augment, soft_labels,
  distil, export, qat, quantize, evaluate, report). A stage is a plain function over
  its parameters and input folders, declared as an `artifacts.stage.Stage`. A stage
  imports helpers, never another stage: its cache key fingerprints the code it
  imports (artifacts/keys.py), so a stage importing a stage would rerun for the
  other's edits.
- helpers, grouped by concept:
  - `data/`: reading sources into splits, phrase trees, text -> ids, batches;
  - `models/`: where models come from, the packaged MPNet, tokenizer alignment;
  - `training/`: the training loop, device and precision, layer-to-layer losses;
  - `onnx/`: PyTorch -> ONNX graph, ONNX Runtime sessions;
  - `measure/`: every measurement of a model, and models as predictors;
  - `report/`: the report's markdown and plots.
- `formats.py` (what each artifact holds, its one reader and writer) and `errors.py`
  (the one bad-input error) are shared by all of them.
"""
