"""Every format turned into Records, detection, forcing, and the field-level errors."""

from __future__ import annotations

import pytest

from affina.data.formats import FORMATS, detect_format, get_format, match_format, to_record
from affina.errors import DataError

SRC = "train.jsonl"


def convert(row, fmt=None, line=7, source=SRC):
    return to_record(row, fmt or match_format(row), source, line)


def roles(record):
    return [(m["role"], m["content"]) for m in record.messages]


def test_alpaca_without_input():
    r = convert({"instruction": "Say hi", "output": "Hi"})
    assert r.format == "alpaca" and r.kind == "chat"
    assert roles(r) == [("user", "Say hi"), ("assistant", "Hi")]
    assert (r.source, r.line) == (SRC, 7)


def test_alpaca_with_input_and_system():
    r = convert({"instruction": "Translate", "input": "chat", "output": "cat",
                 "system": "You translate."})
    assert roles(r) == [("system", "You translate."), ("user", "Translate\n\nchat"),
                        ("assistant", "cat")]


def test_alpaca_empty_input_is_left_out():
    r = convert({"instruction": "Say hi", "input": "  ", "output": "Hi", "system": ""})
    assert roles(r) == [("user", "Say hi"), ("assistant", "Hi")]


def test_chat_with_system_and_several_turns():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}]
    r = convert({"messages": messages, "id": "ex-1"})
    assert r.format == "chat" and r.messages == messages
    assert r.meta == {"id": "ex-1"}


def test_chat_drops_extra_turn_keys():
    r = convert({"messages": [{"role": "user", "content": "hi", "name": "bob"},
                              {"role": "assistant", "content": "hello"}]})
    assert r.messages[0] == {"role": "user", "content": "hi"}


def test_sharegpt_maps_speakers_to_roles():
    r = convert({"conversations": [
        {"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "Bye"},
        {"from": "model", "value": "Bye!"}, {"from": "assistant", "value": "See you"}]})
    assert r.format == "sharegpt"
    assert [m["role"] for m in r.messages] == ["system", "user", "assistant", "user",
                                               "assistant", "assistant"]


def test_prompt_completion_keeps_text_verbatim():
    r = convert({"prompt": "The capital of France is", "completion": " Paris."})
    assert r.format == "prompt_completion"
    assert roles(r) == [("user", "The capital of France is"), ("assistant", " Paris.")]


def test_text():
    r = convert({"text": "Some domain text."})
    assert (r.format, r.kind, r.text, r.label) == ("text", "text", "Some domain text.", None)


@pytest.mark.parametrize("label", ["spam", 1, 0])
def test_text_label_label_becomes_string(label):
    r = convert({"text": "Buy now", "label": label})
    assert (r.format, r.kind, r.label) == ("text_label", "label", str(label))


def test_detect_each_format():
    assert detect_format([(1, {"instruction": "a", "output": "b", "input": ""})], SRC) == "alpaca"
    assert detect_format([(1, {"messages": []})], SRC) == "chat"
    assert detect_format([(1, {"conversations": []})], SRC) == "sharegpt"
    assert detect_format([(1, {"prompt": "a", "completion": "b"})], SRC) == "prompt_completion"
    assert detect_format([(1, {"text": "a", "meta": 1})], SRC) == "text"
    assert detect_format([(1, {"text": "a", "label": "x"})], SRC) == "text_label"


def test_detect_unknown_row_names_keys_and_formats():
    with pytest.raises(DataError) as e:
        detect_format([(1, {"question": "q", "answer": "a"})], SRC)
    message = str(e.value)
    assert message.startswith("train.jsonl:1: row matches no data format")
    assert "['answer', 'question']" in message
    for fmt in FORMATS.values():
        assert fmt.describe() in message
    assert "alpaca (instruction, output, [input], [system])" in message


def test_detect_mixed_names_the_line_where_it_changes():
    rows = [(1, {"text": "a"}), (2, {"text": "b"}), (5, {"prompt": "p", "completion": "c"})]
    with pytest.raises(DataError, match=r"^train\.jsonl:5: format changes from 'text' .* to "
                                        r"'prompt_completion'"):
        detect_format(rows, SRC)


def test_forced_format_unknown_name_lists_choices():
    with pytest.raises(DataError) as e:
        get_format("openai")
    assert "unknown data format 'openai'" in str(e.value)
    for name in FORMATS:
        assert name in str(e.value)


def test_forced_format_overrides_detection():
    # text+label rows read as raw text when the user asks for it
    r = to_record({"text": "hello", "label": "x"}, "text", SRC, 1)
    assert (r.format, r.kind, r.meta) == ("text", "text", {"label": "x"})


def test_forced_format_missing_field_hints_at_the_real_format():
    with pytest.raises(DataError) as e:
        to_record({"messages": []}, "alpaca", SRC, 3)
    assert str(e.value).startswith("train.jsonl:3 field 'instruction': missing")
    assert "looks like 'chat'" in str(e.value)


GOOD_CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("row, field, fragment", [
    ({"instruction": "a"}, "output", "missing"),
    ({"instruction": " \t", "output": "b"}, "instruction", "is empty"),
    ({"instruction": "a", "output": ""}, "output", "is empty"),
    ({"instruction": "a", "output": 42}, "output", "must be a string, got int"),
    ({"instruction": "a", "output": "b", "input": ["x"]}, "input", "must be a string, got list"),
    ({"messages": "hi"}, "messages", "must be a list of turns, got str"),
    ({"messages": []}, "messages", "empty list"),
    ({"messages": ["hi"]}, "messages[0]", "must be an object"),
    ({"messages": [GOOD_CHAT[0], {"role": "bot", "content": "x"}]}, "messages[1].role",
     "is 'bot'; use one of: system, user, assistant"),
    ({"messages": [GOOD_CHAT[0], {"role": "assistant"}]}, "messages[1].content", "missing"),
    ({"messages": [*GOOD_CHAT, {"role": "user", "content": [{"type": "text"}]}]},
     "messages[2].content", "must be a string, got list"),
    ({"messages": [GOOD_CHAT[0], {"role": "assistant", "content": 3}]}, "messages[1].content",
     "must be a string, got int"),
    ({"messages": [GOOD_CHAT[0], {"role": "assistant", "content": "   "}]},
     "messages[1].content", "is empty"),
    ({"messages": [{"role": "system", "content": "s"}, GOOD_CHAT[0]]}, "messages",
     "no assistant turn"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
     "conversations[1].from", "is 'bot'"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "conversations", "no assistant"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]},
     "conversations[1].value", "is empty"),
    ({"prompt": "p", "completion": " "}, "completion", "is empty"),
    ({"text": ""}, "text", "is empty"),
    ({"text": 5}, "text", "must be a string"),
    ({"text": "a", "label": ""}, "label", "is empty"),
    ({"text": "a", "label": None}, "label", "is empty"),
    ({"text": "a", "label": ["x"]}, "label", "must be a string or number"),
])
def test_field_errors_name_file_line_and_field(row, field, fragment):
    fmt = match_format(row) or "alpaca"
    with pytest.raises(DataError) as e:
        to_record(row, fmt, SRC, 12)
    message = str(e.value)
    assert message.startswith(f"train.jsonl:12 field '{field}': "), message
    assert fragment in message
    assert (e.value.source, e.value.line, e.value.field) == (SRC, 12, field)


def test_errors_in_json_files_name_the_item():
    with pytest.raises(DataError, match=r"^data\.json\[item 4\] field 'text': is empty"):
        to_record({"text": ""}, "text", "data.json", 4)
