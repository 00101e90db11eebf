"""fetch_dataset: every supported format, and every bad input refused with its fix."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifacts.stage import run_stage
from artifacts.store import ArtifactStore
from conftest import DATA_ROOT, EMOTION_LABELS, sst2_phrases, tree_state, write_emotion_slice
from tasks.stages import fetch
from tasks.data.phrases import constituents, full_sentences, sentence_holdout
from tasks.data.sources import DataParams, load_splits
from tasks.errors import DistilleryError


def params(source, **kw) -> DataParams:
    return DataParams(source=str(source), label_names=EMOTION_LABELS, **kw)


def test_emotion_files_read_with_dair_ai_label_ids(emotion_slice):
    splits, names = load_splits(params(emotion_slice))
    assert names == EMOTION_LABELS
    assert {s: len(f) for s, f in splits.items()} == {"train": 300, "validation": 60, "test": 60}
    first = (emotion_slice / "train.txt").read_text().splitlines()[1]
    text, label = first.rsplit(";", 1)
    assert splits["train"].iloc[0]["text"] == text
    assert splits["train"].iloc[0]["label"] == EMOTION_LABELS.index(label)


def test_glue_tsv_with_dev_as_test_and_seeded_validation(tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    rows = [f"sentence number {i} \t{i % 2}" for i in range(50)]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\nit 's fine \t1\nbad movie \t0\n")
    p = DataParams(source=str(folder), splits={"train": "train", "test": "dev"},
                   label_names=["negative", "positive"], validation_fraction=0.2, seed=7)
    splits, names = load_splits(p)
    assert len(splits["validation"]) == 10 and len(splits["train"]) == 40
    assert splits["test"]["text"].tolist() == ["it 's fine", "bad movie"]  # trailing space stripped
    again, _ = load_splits(p)
    assert again["validation"].equals(splits["validation"])
    other, _ = load_splits(p.model_copy(update={"seed": 8}))
    assert not other["validation"]["text"].equals(splits["validation"]["text"])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_csv_jsonl_parquet_with_column_and_label_mapping(tmp_path, fmt):
    folder = tmp_path / fmt
    folder.mkdir()
    for split, n in (("train", 20), ("validation", 6), ("test", 6)):
        frame = pd.DataFrame({"review": [f"{split} text {i}" for i in range(n)], "stars": [EMOTION_LABELS[i % 6] for i in range(n)]})
        path = folder / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
        else:
            frame.to_parquet(path)
    splits, names = load_splits(params(folder, text_column="review", label_column="stars"))
    assert splits["train"]["label"].tolist()[:6] == [0, 1, 2, 3, 4, 5]
    assert splits["test"]["text"].iloc[0] == "test text 0"


def test_integer_labels_and_inferred_label_set(tmp_path):
    folder = tmp_path / "ints"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.csv").write_text("text,label\n" + "\n".join(f"t {i},{i % 3}" for i in range(12)))
    splits, names = load_splits(DataParams(source=str(folder)))
    assert names == ["0", "1", "2"]
    assert set(splits["train"]["label"]) | set(splits["validation"]["label"]) == {0, 1, 2}


def test_artifact_digest_is_of_content_not_path(tmp_path, emotion_dir):
    a = write_emotion_slice(emotion_dir, tmp_path / "a", {"train": 50, "val": 10, "test": 10})
    b = write_emotion_slice(emotion_dir, tmp_path / "elsewhere" / "b", {"train": 50, "val": 10, "test": 10})
    store = ArtifactStore(tmp_path / "store")
    assert run_stage(fetch.STAGE, params(a), {}, store) == run_stage(fetch.STAGE, params(b), {}, store)


def test_slices_are_seeded_samples(emotion_dir):
    one, _ = load_splits(params(emotion_dir, max_train_rows=200, max_eval_rows=50))
    two, _ = load_splits(params(emotion_dir, max_train_rows=200, max_eval_rows=50))
    assert len(one["train"]) == 200 and len(one["test"]) == 50
    assert one["train"].equals(two["train"])
    assert len(set(one["train"]["label"])) == 6  # a sample, not the head of the file


# -- bad input: each refused with the problem and the fix, nothing stored ----------------
def _edit(folder, split, transform):
    path = folder / f"{split}.txt"
    path.write_bytes(transform(path.read_bytes()))


def _strip_labels(folder):
    for split in ("train", "val", "test"):
        lines = (folder / f"{split}.txt").read_text().splitlines()
        (folder / f"{split}.txt").write_text("\n".join(line.rsplit(";", 1)[0] for line in lines) + "\n")


BAD_INPUTS = {
    # case: (how the data or parameters are broken, words of the problem, words of the fix)
    "missing data path": (lambda f: params(f.parent / "nope"), "does not exist", "--data"),
    "data path is a file": (lambda f: params(f / "train.txt"), "is a file", "--data"),
    "missing test split": (lambda f: (f / "test.txt").unlink() or params(f), "no test split", "--data-splits"),
    "missing named split file": (lambda f: params(f, splits={"train": "train", "test": "holdout.tsv"}), "holdout.tsv", "--data-splits"),
    "unknown label column": (lambda f: params(f, label_column="emotion"), "label column 'emotion' is not in", "--data-label-column"),
    "lines without labels": (lambda f: _strip_labels(f) or params(f), "no ';'", "text;label"),
    "label outside the set": (lambda f: _edit(f, "val", lambda b: b.replace(b";joy\n", b";happiness\n", 1)) or params(f), "outside the label set", "--data-label-names"),
    "empty split": (lambda f: _edit(f, "test", lambda b: b"text;label_name\n") or params(f), "is empty", "at least one"),
    "empty text": (lambda f: _edit(f, "train", lambda b: b + b"   ;joy\n") or params(f), "empty text", "remove those rows"),
    "not utf-8": (lambda f: _edit(f, "train", lambda b: b + "caf\u00e9;joy\n".encode("latin-1")) or params(f), "not UTF-8", "iconv"),
    "file over the size limit": (lambda f: params(f, max_file_mb=0.01), "above the 0.01 MB", "--data-max-file-mb"),
    "one-label set": (lambda f: params(f).model_copy(update={"label_names": ["joy"]}), "at least two", "--data-label-names"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_data_is_refused_before_anything_is_stored(tmp_path, emotion_dir, emotion_slice, case):
    store = ArtifactStore(tmp_path / "store")
    good = write_emotion_slice(emotion_dir, tmp_path / "good", {"train": 30, "val": 10, "test": 10})
    run_stage(fetch.STAGE, params(good), {}, store)  # the store already holds work
    make, problem, fix = BAD_INPUTS[case]
    p = make(emotion_slice)
    before = tree_state(tmp_path / "store")
    with pytest.raises(DistilleryError) as error:
        run_stage(fetch.STAGE, p, {}, store)
    message = str(error.value)
    assert problem in message and fix in message, message
    assert tree_state(tmp_path / "store") == before


def test_hub_id_offline_fails_fast_naming_the_local_option():
    with pytest.raises(DistilleryError) as error:
        load_splits(DataParams(source="dair-ai/emotion"))
    message = str(error.value)
    assert "dair-ai/emotion" in message and "--data" in message and "DISTILLERY_DATA" in message


def test_folder_on_any_fsspec_filesystem(emotion_slice):
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ("train.txt", "val.txt", "test.txt"):
        fs.pipe(f"/remote-emotion/{name}", (emotion_slice / name).read_bytes())
    remote, _ = load_splits(params("memory://remote-emotion"))
    local, _ = load_splits(params(emotion_slice))
    assert all(remote[s].equals(local[s]) for s in local)


def test_csv_without_a_label_column_names_the_columns_found(tmp_path):
    folder = tmp_path / "nolabel"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.csv").write_text("text,score\nhello,1\nbye,2\n")
    with pytest.raises(DistilleryError, match=r"no label column .*\['text', 'score'\].*--data-label-column"):
        load_splits(DataParams(source=str(folder)))


# --- phrase-tree data (SST-2): sentences, and validation held out by sentence -------------

def test_full_sentences_are_the_texts_no_other_text_contains(emotion_dir):
    tree = ["a gorgeous , witty film", "gorgeous , witty", "witty", "film", "a dull film", "dull",
            "witty film", "a gorgeous , witty film", "film festival"]
    # "witty film" is inside the first sentence; the repeated sentence counts once; "film festival" stands alone
    assert full_sentences(tree) == [0, 4, 8]
    phrases = sst2_phrases()
    kept = full_sentences(phrases)
    assert 6000 < len(kept) < 8000  # SST-2's 67,349 train phrases come from about 6,900 sentences
    assert np.median([len(phrases[k].split()) for k in kept]) >= 2 * np.median([len(p.split()) for p in phrases])
    assert all(phrases[k] not in phrases[j] for k in kept[:50] for j in kept if j != k)
    tweets = [line.rsplit(";", 1)[0] for line in (emotion_dir / "train.txt").read_text().splitlines()[1:501]]
    assert len(full_sentences(tweets)) > 480  # tweets are not one another's sub-phrases


def test_constituents_are_the_runs_of_a_text_that_are_other_texts():
    tree = ["a gorgeous , witty film", "gorgeous , witty", "witty", "witty film", "a dull film", "dull film",
            "heart", "the art"]
    found = constituents(tree, range(len(tree)))
    # single words and the whole text are no constituents; "art" is not inside "heart"
    assert found == {0: [(3, 5), (1, 4)], 4: [(1, 3)]}
    assert [" ".join(tree[0].split()[a:b]) for a, b in found[0]] == ["witty film", "gorgeous , witty"]
    assert constituents(tree, [4, 6]) == {4: [(1, 3)]}  # only the texts asked about


def test_sentence_holdout_keeps_validation_sentences_and_their_own_phrases_out_of_train(tmp_path):
    phrases = sst2_phrases()
    held, kept = sentence_holdout(phrases, 0.1, seed=3)
    sentences = full_sentences(phrases)
    assert set(held) <= set(sentences) and abs(len(held) - 0.1 * len(sentences)) <= 1
    assert not set(held) & set(kept)
    train_text = {phrases[k] for k in kept}
    for h in held[:40]:  # no held-out sentence and none of its phrases that no train sentence has
        assert phrases[h] not in train_text
    train_sentences = [phrases[k] for k in kept if k in set(sentences)]
    joined = "\n".join(train_sentences)
    assert all(phrases[k] in joined for k in kept[:300])  # every train row is inside a train sentence
    assert len(kept) > 0.85 * len(phrases)  # shared phrases ("the film") stay in train
    assert sentence_holdout(phrases, 0.1, seed=3) == (held, kept) and sentence_holdout(phrases, 0.1, seed=4)[0] != held

    folder = tmp_path / "sst2"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join((DATA_ROOT / "sst2" / "train.tsv").read_text().splitlines()[1:]) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\nit 's fine \t1\nbad movie \t0\n")
    p = DataParams(source=str(folder), splits={"train": "train", "test": "dev"}, label_names=["negative", "positive"],
                   validation_holdout="sentences")
    splits, _ = load_splits(p)
    held, kept = sentence_holdout(phrases, 0.1, seed=42)
    assert splits["validation"]["text"].tolist() == [phrases[h] for h in held]
    assert splits["train"]["text"].tolist() == [phrases[k] for k in kept]
    one = tmp_path / "one"
    one.mkdir()
    (one / "train.tsv").write_text("sentence\tlabel\na fine film\t1\nfine\t0\n")  # one sentence: nothing left to train on
    (one / "dev.tsv").write_text("sentence\tlabel\nbad\t0\n")
    with pytest.raises(DistilleryError, match="no sentence for validation and another for train; use --data-validation-holdout rows"):
        load_splits(p.model_copy(update={"source": str(one)}))


def sharded_emotion(emotion_dir, target, shards: int = 3, rows: int = 40) -> Path:
    """Real emotion rows as a folder of CSV shards for train (a file a day), one test file."""
    lines = [line.rsplit(";", 1) for line in (emotion_dir / "train.txt").read_text().splitlines()[1:]]
    (target / "train").mkdir(parents=True)
    for day in range(shards):
        chunk = lines[day * rows:(day + 1) * rows]
        pd.DataFrame(chunk, columns=["text", "label"]).to_csv(target / "train" / f"2026-12-0{day + 1}.csv", index=False)
    test = [line.rsplit(";", 1) for line in (emotion_dir / "test.txt").read_text().splitlines()[1:31]]
    pd.DataFrame(test, columns=["text", "label"]).to_csv(target / "test.csv", index=False)
    return target


def test_a_split_may_be_a_folder_of_shards_and_a_new_shard_adds_rows_and_changes_the_key(tmp_path, emotion_dir):
    from tasks.data.sources import source_fingerprint

    folder = sharded_emotion(emotion_dir, tmp_path / "daily", shards=2)
    two_days, _ = load_splits(params(folder))
    key_before = fetch.STAGE.key(params(folder), {})
    shards = source_fingerprint(params(folder))["files"]["train"]
    assert [s["name"] for s in shards] == ["train/2026-12-01.csv", "train/2026-12-02.csv"]
    (folder / "train" / "2026-12-03.csv").write_text((folder / "train" / "2026-12-02.csv").read_text().replace("i ", "we ", 5))
    three_days, _ = load_splits(params(folder))
    assert len(three_days["train"]) + len(three_days["validation"]) == 120
    assert len(two_days["train"]) + len(two_days["validation"]) == 80
    assert fetch.STAGE.key(params(folder), {}) != key_before  # the nightly run reads the new day's rows


def test_a_split_may_be_named_by_a_glob_and_a_glob_matching_nothing_is_refused(tmp_path, emotion_dir):
    folder = sharded_emotion(emotion_dir, tmp_path / "daily", shards=3)
    first_two, _ = load_splits(params(folder, splits={"train": "train/2026-12-0[12].csv", "test": "test.csv"}))
    assert len(first_two["train"]) + len(first_two["validation"]) == 80
    with pytest.raises(DistilleryError, match=r"pattern 'train/2025-\*\.csv' matches no data file.*--data-splits"):
        load_splits(params(folder, splits={"train": "train/2025-*.csv", "test": "test.csv"}))


def test_a_shard_with_other_columns_is_refused_naming_it(tmp_path, emotion_dir):
    folder = sharded_emotion(emotion_dir, tmp_path / "daily", shards=2)
    odd = folder / "train" / "2026-12-02.csv"
    odd.write_text(odd.read_text().replace("text,label", "sentence,label", 1))
    with pytest.raises(DistilleryError, match=r"shard .*2026-12-02\.csv of the train split has columns \['sentence', 'label'\]"):
        load_splits(params(folder))


def test_an_unpinned_hub_source_offline_is_refused_at_the_edge_naming_the_fixes(monkeypatch):
    from flows.presets import build_config, emotion
    from tasks.data.sources import resolve_data_revision

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DistilleryError) as refused:
        build_config(emotion())  # the preset's source: dair-ai/emotion, no revision
    assert "--data-revision" in str(refused.value) and "--data" in str(refused.value)
    pinned = DataParams(source="dair-ai/emotion", revision="0123abcd")
    assert resolve_data_revision(pinned) == pinned  # pinned: used as given
    local = DataParams(source=str(DATA_ROOT / "emotion"))
    assert resolve_data_revision(local) == local  # folders are keyed by their files' checksums


def test_a_hub_revision_that_cannot_be_resolved_is_refused_naming_the_revision_flag(monkeypatch):
    """Online, a revision is resolved to its commit before anything runs. Here there is no Hub to
    ask (the machine is offline in fact, not by setting), which is the path a revision the Hub
    does not have takes too: refused, naming the source, the revision and the flags."""
    from tasks.data.sources import resolve_data_revision

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DistilleryError) as refused:
        resolve_data_revision(DataParams(source="dair-ai/emotion", revision="no-such-revision"))
    message = str(refused.value)
    assert "cannot resolve data set 'dair-ai/emotion' at revision 'no-such-revision'" in message
    assert "--data-revision" in message and "--data PATH" in message
