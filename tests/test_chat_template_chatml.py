"""A ChatML model (the real SmolLM2-135M-Instruct): markers read off its template, every row's
mask verified as strictly as harmony's, and a template whose assistant turn ends with another
token than the model stops at is refused before training."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runner.artifacts import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "golden.yaml"
ENV = {"HF_HUB_OFFLINE": "1"}


def _recipe(tmp_path: Path, chat: str) -> Path:
    text = GOLDEN.read_text().replace("../data/golden_pairs.jsonl",
                                      str(ROOT / "tests" / "data" / "golden_pairs.jsonl"))
    # The golden run cuts rows to 128 tokens to train fast; here every row is kept whole.
    text = re.sub(r"^chat_template:.*$", chat, text, flags=re.M)
    recipe = tmp_path / "chatml.yaml"
    recipe.write_text(text.replace("max_seq_length: 128", "max_seq_length: 192"))
    return recipe


def test_chatml_markers_come_from_the_template_and_every_row_is_verified(cli, tmp_path):
    result = cli("run", _recipe(tmp_path, "chat_template: {}"), "--until", "chat_template",
                 "--run-dir", tmp_path / "runs", "--quiet", env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    step = tmp_path / "runs" / "golden_loss" / "chat_template"
    chat = json.loads((step / "chat.json").read_text())
    assert chat["template_kind"] == "generic" and chat["channel_fix"] is False
    assert (chat["instruction_part"], chat["response_part"], chat["end_token"]) == (
        "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>")
    assert chat["require"] == ["<|im_start|>user", "<|im_start|>assistant", "<|im_end|>"]
    report = json.loads((step / "mask_report.json").read_text())
    assert report["every_row_verified"] and report["rows_in"] == 48 and report["rows_out"] >= 45
    assert {entry["from"] for entry in report["markers"].values()} == {"template"}
    assert "read off the generic template" in (step / "mask_report.md").read_text()
    row = next(read_jsonl(step / "dataset.jsonl"))
    # The row ends at the token the model stops at: the template's trailing newline is not trained.
    assert row["text"].endswith(row["messages"][-1]["content"] + "<|im_end|>")
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in row["text"]
    shown = cli("show", _recipe(tmp_path, "chat_template: {}"), env=ENV)
    assert '#   response_part: "<|im_start|>assistant\\n"' in shown.stdout


VARIANT = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + message['content'] + '<|endoftext|>' + '\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"""


def test_template_ending_the_answer_with_another_token_stops_before_training(cli, tmp_path):
    (tmp_path / "variant.jinja").write_text(VARIANT)
    recipe = _recipe(tmp_path, "chat_template: {template: variant.jinja}")
    result = cli("run", recipe, "--until", "training", "--run-dir", tmp_path / "runs",
                 "--quiet", env=ENV)
    assert result.returncode == 1
    assert ("the template ends the assistant turn with '<|endoftext|>' (id 0), but the model "
            "stops generating only at '<|im_end|>'") in result.stderr
    assert "Traceback" not in result.stderr
    run = tmp_path / "runs" / "golden_loss"
    assert not (run / "chat_template").exists() and not (run / "training").exists()
