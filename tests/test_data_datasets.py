"""Prompt datasets: JSONL, JSON, Parquet, HF save_to_disk folders; column mapping, chat template,
malformed rows skipped, counted and reported."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deltarl.rl.data import load_prompt_dataset

GOOD = [
    {"question": "What is 2+2?", "answer": "4", "level": 1},
    {"question": "What is 3*3?", "answer": "9", "level": 2},
]


@pytest.fixture()
def chat_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0},
                                                                              unk_token="[UNK]")))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def test_jsonl_with_malformed_rows(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(GOOD[0]), "{not json", json.dumps([1, 2]),
             json.dumps({"question": "no answer here"}), json.dumps({"question": "", "answer": "1"}),
             json.dumps({"question": None, "answer": "1"}), json.dumps({"question": 7, "answer": "1"}),
             "", json.dumps(GOOD[1])]
    path.write_text("\n".join(lines) + "\n")
    rows, report = load_prompt_dataset(path, {"prompt": "question", "answer": "answer"})
    assert [r["answer"] for r in rows] == ["4", "9"]
    assert rows[0]["prompt"] == "What is 2+2?"
    assert rows[0]["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert rows[0]["level"] == 1  # other columns are kept for reward functions
    assert (report.total, report.kept, report.skipped) == (8, 2, 6)  # the blank line is no row
    assert report.reasons == {"invalid JSON": 1, "not an object": 1, "missing column 'answer'": 1,
                              "bad prompt": 2, "missing column 'question'": 1}
    assert report.examples[0].startswith("row 1: invalid JSON")
    assert len(report.examples) == 5  # the first few only
    assert "kept 2 of 8" in str(report)


def test_chat_template_and_system_prompt(tmp_path, chat_tokenizer):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GOOD))
    rows, _ = load_prompt_dataset(path, {"prompt": "question"}, tokenizer=chat_tokenizer,
                                  system_prompt="Be brief.")
    assert rows[0]["prompt"] == "<|system|>Be brief.\n<|user|>What is 2+2?\n<|assistant|>"
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    rows, _ = load_prompt_dataset(path, {"prompt": "question"}, tokenizer=object())
    assert rows[0]["prompt"] == "What is 2+2?"  # no template: the raw text


def test_message_list_prompts_and_nested_columns(tmp_path, chat_tokenizer):
    records = [{"prompt": [{"role": "user", "content": "Hi"}],
                "reward_model": {"ground_truth": "42"}, "data_source": "x"},
               {"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}},
               {"prompt": [{"role": "user", "content": "Yo"}], "reward_model": {}}]
    path = tmp_path / "verl_style.json"
    path.write_text(json.dumps(records))
    rows, report = load_prompt_dataset(path, {"answer": "reward_model.ground_truth"},
                                       tokenizer=chat_tokenizer)
    assert len(rows) == 1 and rows[0]["answer"] == "42"
    assert rows[0]["prompt"] == "<|user|>Hi\n<|assistant|>"
    assert rows[0]["data_source"] == "x" and "reward_model" not in rows[0]
    assert report.reasons == {"bad prompt": 1, "missing column 'reward_model.ground_truth'": 1}


def test_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    table = pa.table({"problem": ["1+1", None, "2+2"], "solution": ["2", "x", None],
                      "tests": ['{"inputs": []}', "{}", "{}"]})
    pq.write_table(table, path)
    rows, report = load_prompt_dataset(path, {"prompt": "problem", "answer": "solution"})
    assert [(r["prompt"], r["answer"], r["tests"]) for r in rows] == [("1+1", "2", '{"inputs": []}')]
    assert report.reasons == {"missing column 'problem'": 1, "missing column 'solution'": 1}


def test_hf_save_to_disk_folder_and_data_file_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict({"train": Dataset.from_list(GOOD), "test": Dataset.from_list(GOOD[:1])})
    ds.save_to_disk(str(tmp_path / "hf"))
    rows, report = load_prompt_dataset(tmp_path / "hf", {"prompt": "question"})
    assert len(rows) == 2 and report.kept == 2
    rows, _ = load_prompt_dataset(tmp_path / "hf", {"prompt": "question"}, split="test")
    assert len(rows) == 1
    with pytest.raises(ValueError):
        load_prompt_dataset(tmp_path / "hf", {"prompt": "question"}, split="validation")

    folder = tmp_path / "repo" / "data"  # a dataset repository's layout of data files
    folder.mkdir(parents=True)
    (folder / "train-00000.jsonl").write_text("\n".join(json.dumps(r) for r in GOOD))
    (folder / "test-00000.jsonl").write_text(json.dumps(GOOD[0]))
    rows, _ = load_prompt_dataset(tmp_path / "repo", {"prompt": "question"})
    assert [r["answer"] for r in rows] == ["4", "9"]


def test_limit_and_missing_path(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GOOD * 5))
    rows, report = load_prompt_dataset(path, {"prompt": "question"}, limit=3)
    assert len(rows) == 3 and report.kept == 3
    with pytest.raises(FileNotFoundError):
        load_prompt_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError):
        load_prompt_dataset(tmp_path / "x.csv")
