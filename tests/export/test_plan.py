"""Planning is pure: options resolved from the model's facts and the machine's, refusals before
any work, and a key that changes exactly when the artifact would."""

from __future__ import annotations

import pytest

from lora_hub.errors import ExportError, InvalidArgumentError
from lora_hub.export import EXPORTERS, get_exporter
from lora_hub.export.environment import Environment, Gpu
from lora_hub.export.plan import TOLERANCES, ExportOptions, ModelFacts, make_options, plan_export

FP = "sha256:" + "ab" * 32
LLAMA = ModelFacts(
    model_type="llama", architecture="LlamaForCausalLM", task="causal-lm", output="logits", decoder=True,
    use_cache_kwarg=True, static_cache=True, config_dtype="float32", vocab_size=128, hidden_size=32,
    max_positions=2048, weight_bytes=400_000,
)  # fmt: skip
BERT = ModelFacts(
    model_type="bert", architecture="BertModel", task="feature-extraction", output="last_hidden_state",
    decoder=False, static_cache=False, config_dtype="float32", vocab_size=30522, hidden_size=384, max_positions=512,
)  # fmt: skip


BASE_VERSIONS = {"python": "3.11.7", "lora_hub": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.24.0",
                 "onnx": "1.23.2", "onnxscript": "0.7.2", "onnxruntime": "1.32.0"}  # fmt: skip


def env(*, gpus: bool = False, modules: bool = True, compiler: bool = True, **versions: str) -> Environment:
    mods = dict.fromkeys(("onnx", "onnxscript", "onnxruntime"), modules) | {"torch_tensorrt": False, "tensorrt": False}
    return Environment(
        python="3.11.7",
        machine="x86_64",
        versions=BASE_VERSIONS | versions,
        modules=mods,
        gpus=[Gpu(index=0, name="NVIDIA H200", compute_capability="sm_90")] if gpus else [],
        cuda="13.0" if gpus else None,
        onnxruntime_providers=["CPUExecutionProvider"],
        compiler="g++: g++ 12.2" if compiler else None,
        cpu="Test CPU",
        cpu_isa=["avx2", "fma"],
    )


def plan(fmt: str, facts: ModelFacts = LLAMA, e: Environment | None = None, fp: str | None = FP, **options: object):
    opts = make_options(**options)
    return plan_export("/models/x", facts, get_exporter(fmt), opts, e or env(), source_fingerprint=fp)


def test_defaults_are_resolved() -> None:
    p = plan("onnx")
    assert p.options == ExportOptions(dtype="float32", device="cpu", max_batch=8, max_seq=1024, opset=20)
    assert p.contract.dims == {"batch": (1, 8), "seq": (1, 1024)}
    assert [t.name for t in p.contract.inputs] == ["input_ids", "attention_mask"]
    assert p.contract.outputs[0].shape == ["batch", "seq", 128]
    assert p.tolerance == TOLERANCES["float32"]
    assert p.versions["onnxruntime"] == "1.32.0" and "compiler" not in p.versions
    cached = plan("torch-export", with_cache=True, max_seq=64)
    assert cached.options.max_batch == 1 and cached.options.steps == 8
    assert cached.contract.cache is not None and cached.contract.cache.max_cache_len == 64
    assert cached.contract.dims == {"seq": (1, 63)} and cached.contract.attention_mask is False
    assert plan("torch-export", BERT).options.max_seq == 512  # the model's limit
    assert plan("aoti").versions["compiler"] == "g++: g++ 12.2"


def test_the_key_changes_with_what_changes_the_artifact() -> None:
    key = plan("torch-export").key
    assert key is not None and key.startswith("sha256:") and plan("torch-export").key == key
    assert plan("torch-export", seed=5, steps=3).key == key  # they change the check, not the artifact
    others = [
        plan("torchscript").key,
        plan("torch-export", dtype="bfloat16").key,
        plan("torch-export", max_seq=512).key,
        plan("torch-export", with_cache=True).key,
        plan("torch-export", fp="sha256:" + "cd" * 32).key,
        plan("torch-export", e=env(torch="2.13.1+cpu")).key,
    ]
    assert len({key, *others}) == 7
    assert plan("torch-export", fp=None).key is None
    # only compiled formats depend on the instruction set
    isa = env().model_copy(update={"cpu_isa": ["avx2", "avx512f"]})
    assert plan("torch-export", e=isa).key == key
    assert plan("aoti", e=isa).key != plan("aoti").key


def test_unknown_format() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown export format 'tflite'") as info:
        get_exporter("tflite")
    assert "torch-export" in (info.value.hint or "")


def test_tensorrt_is_refused_without_cuda_and_says_what_is_needed() -> None:
    with pytest.raises(ExportError) as info:
        plan("tensorrt")
    assert info.value.message == (
        "cannot export to tensorrt on this machine: needs a CUDA GPU and torch-tensorrt "
        "(`pip install 'lora-hub[tensorrt]'`)"
    )
    with_gpu = env(gpus=True).model_copy(update={"modules": env().modules | {"torch_tensorrt": True}})
    assert plan("tensorrt", e=with_gpu).options.device == "cuda:0"
    assert plan("tensorrt", e=with_gpu).target.compute_capability == "sm_90"


def test_missing_onnx_packages_are_named() -> None:
    reason = EXPORTERS["onnx"].unavailable(env(modules=False))
    assert reason == "needs onnx, onnxscript and onnxruntime (`pip install 'lora-hub[export]'`)"
    with pytest.raises(ExportError, match="needs onnx, onnxscript and onnxruntime"):
        plan("onnx", e=env(modules=False))
    assert EXPORTERS["aoti"].unavailable(env(compiler=False)) == "needs a C++ compiler (g++ or clang++ on PATH, or CXX)"


def test_cuda_device_without_a_gpu_or_runtime() -> None:
    with pytest.raises(ExportError, match="needs a CUDA GPU"):
        plan("torch-export", device="cuda")
    with pytest.raises(ExportError, match="onnxruntime-gpu"):
        plan("onnx", e=env(gpus=True), device="cuda")
    assert plan("onnx", e=env(gpus=True)).options.device == "cpu"  # auto: where its runtime runs
    assert plan("torch-export", e=env(gpus=True)).options.device == "cuda:0"


@pytest.mark.parametrize(
    ("fmt", "facts", "options", "match"),
    [
        ("onnx", LLAMA, {"with_cache": True}, "onnx cannot carry a KV cache: .*silently drops its KV state"),
        ("torchscript", LLAMA, {"with_cache": True}, "torchscript cannot carry a KV cache: .*is_causal"),
        ("torch-export", BERT, {"with_cache": True}, "a KV-cache export is for decoder language models; BertModel"),
        ("onnx", LLAMA, {"dtype": "bfloat16"}, "onnx cannot run bfloat16 on the CPU"),
        ("torch-export", LLAMA, {"opset": 18}, "--opset applies to the onnx format only"),
        ("torch-export", BERT, {"max_seq": 1024}, "longer than the model's 512 positions"),
        ("aoti", LLAMA, {"with_cache": True, "max_seq": 4}, "needs --max-seq 8 or more"),
    ],
)
def test_options_that_do_not_apply_are_refused(fmt: str, facts: ModelFacts, options: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        plan(fmt, facts, **options)


def test_static_cache_needs_a_model_that_supports_it() -> None:
    no_static = LLAMA.model_copy(update={"static_cache": False, "architecture": "OldForCausalLM"})
    with pytest.raises(InvalidArgumentError, match="cannot run OldForCausalLM with a static KV cache"):
        plan("torch-export", no_static, with_cache=True)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"dtype": "float64"}, "dtype"), ({"max_batch": 0}, "max_batch"), ({"device": "tpu"}, "device")],
)
def test_bad_option_values(options: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"bad export option: {match}"):
        make_options(**options)


def test_half_precision_tolerances_are_looser_but_bounded() -> None:
    assert plan("torch-export", dtype="bfloat16").tolerance.rtol == TOLERANCES["bfloat16"].rtol
    assert TOLERANCES["float32"].atol == 1e-4
    assert TOLERANCES["float32"].rtol < TOLERANCES["float16"].rtol <= TOLERANCES["bfloat16"].rtol < 0.1
