"""The locally built CLIP-format tokenizer: one token per grammar word, byte fallback, truncation, round trip."""

from transformers import CLIPTokenizer

from alignment.embedded.data import VOCABULARY
from alignment.embedded.tokenizer import MODEL_MAX_LENGTH, build_tokenizer


def test_every_grammar_word_is_one_token(tmp_path):
    tok = build_tokenizer(tmp_path)
    for word in VOCABULARY:
        assert tok.tokenize(word) == [word + "</w>"]
    assert tok.model_max_length == MODEL_MAX_LENGTH


def test_round_trip_through_save_pretrained(tmp_path):
    tok = build_tokenizer(tmp_path / "a")
    tok.save_pretrained(tmp_path / "b")
    again = CLIPTokenizer.from_pretrained(tmp_path / "b")
    text = "An orange Triangle on a WHITE background"
    assert again(text).input_ids == tok(text).input_ids
    assert again.model_max_length == MODEL_MAX_LENGTH


def test_unknown_words_fall_back_to_bytes_not_unk(tmp_path):
    tok = build_tokenizer(tmp_path)
    ids = tok("a zebra, très jolie!").input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "azebra,trèsjolie!"


def test_over_long_prompts_are_truncated_to_the_model_length(tmp_path):
    tok = build_tokenizer(tmp_path)
    ids = tok(" ".join(["red circle"] * 50), truncation=True, max_length=tok.model_max_length).input_ids
    assert len(ids) == MODEL_MAX_LENGTH and ids[-1] == tok.eos_token_id
