"""LoRA on 2 gloo ranks under ZeRO-2 and ZeRO-3: phase dae (tied decoder on the LoRA layers) through the
pipeline, then phase ft's steps by hand so that the trained values can be read from the engine; then the three
export forms against them."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import REPO
from multiproc.spawn import run_ranks

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

R, ALPHA, HEAD_HIDDEN = 4, 8, 16
FT_STEPS = 3
DATA = REPO / "examples" / "demo" / "train.jsonl"
PROBE = ["please play some jazz now", "will it rain tomorrow in town", "book a table for dinner"]
ZERO_2_AND_3 = pytest.mark.parametrize("trained", [2, 3], ids=["zero2", "zero3"], indirect=True)
ZERO_3 = pytest.mark.parametrize("trained", [3], ids=["zero3"], indirect=True)
"""Only ZeRO-3 partitions parameters: the ungathered-writer case exists for it alone."""


def _train_and_export(model_dir: str, train: str, run_dir: str, stage: int) -> dict | None:
    from pathlib import Path

    from dcl_dist import dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.data.batching import Tokenize
    from dcl_dist.data.splits import load_splits
    from dcl_dist.errors import ModelError
    from dcl_dist.export import FORMS, export
    from dcl_dist.models.artifact import write_artifact
    from dcl_dist.models.head import Classifier, ClassifierHead
    from dcl_dist.phases.context import PhaseContext
    from dcl_dist.phases.dae import build_model
    from dcl_dist.phases.outputs import save_artifact
    from dcl_dist.phases.start import load_start, report_trainable, seed_everything
    from dcl_dist.pipeline import run_variant
    from dcl_dist.rundir import RunDir

    cfg = load_config(
        None,
        [
            f"run.dir={run_dir}",
            f"model.name_or_path={model_dir}",
            f"data.train={train}",
            "run.variant=dae_ft",
            "model.max_length=24",
            f"deepspeed.zero_stage={stage}",
            "dae.max_steps=2",
            "dae.micro_batch_size_per_rank=4",
            "dae.lr=1e-2",
            "ft.lr=1e-2",
            f"ft.head_hidden={HEAD_HIDDEN}",
            "ft.dropout=0.0",
            "lora.enabled=true",
            f"lora.r={R}",
            f"lora.alpha={ALPHA}",
            "lora.dropout=0.0",
            "logging.progress_bar=false",
        ],
    )
    out: dict = {}
    dae_count, _ = report_trainable(build_model(PhaseContext(cfg, RunDir(run_dir), None, model_dir))[0], "dae")
    run_variant(cfg, only_phase="dae")
    dae_artifact = RunDir(run_dir).phase("dae").artifact

    splits = load_splits(cfg)
    ctx = PhaseContext(cfg, RunDir(run_dir), splits, str(dae_artifact), [{"phase": "dae"}])
    seed_everything(cfg.run.seed)
    encoder, tokenizer = load_start(ctx, "ft")
    head = ClassifierHead(encoder.hidden_size, HEAD_HIDDEN, len(splits.class_names), 0.0)
    model = Classifier(encoder, head)
    ft_count, _ = report_trainable(model, "ft")
    model_engine = engine.initialize(model, cfg, "ft", total_steps=FT_STEPS, hidden_size=encoder.hidden_size)
    tokenize = Tokenize(tokenizer, 24)
    for step in range(FT_STEPS):  # each rank its own examples
        rows = [(dist.rank() * FT_STEPS + step) * 4 + i for i in range(4)]
        batch = tokenize([splits.train.texts[i] for i in rows])
        labels = torch.tensor([splits.train.labels[i] for i in rows])
        logits = model_engine(batch["input_ids"], batch["attention_mask"])
        model_engine.backward(torch.nn.functional.cross_entropy(logits, labels))
        model_engine.step()
    model_engine.eval()
    probe = tokenize(PROBE)
    with torch.no_grad():
        logits = model_engine(probe["input_ids"], probe["attention_mask"])
        embeddings = model_engine.module.encoder(probe["input_ids"], probe["attention_mask"])
    if stage == 3 and dist.is_main():
        try:  # outside a gather, rank 0 holds empty partitions: the writer must refuse them
            write_artifact(Path(run_dir) / "ungathered", model_engine.module.encoder, tokenizer, {}, 24, head=head)
            out["ungathered"] = "written"
        except ModelError as e:
            out["ungathered"] = str(e)
    with engine.full_parameters(model_engine.module):
        trained = {n: p.detach().clone() for n, p in model_engine.module.named_parameters() if p.requires_grad}
    encoder = model_engine.module.encoder
    save_artifact(ctx, "ft", model_engine, encoder, tokenizer, 24, {}, head=model_engine.module.head)
    if not dist.is_main():
        return None
    exports = {form: export(Path(run_dir), form, Path(run_dir).parent / "out" / form, "ft") for form in FORMS}
    out.update(
        dae_count=dae_count,
        ft_count=ft_count,
        trained=trained,
        logits=logits,
        embeddings=embeddings,
        exports={k: str(v) for k, v in exports.items()},
        dae_adapter=str(dae_artifact / "adapter"),
    )
    return out


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory, tiny_model_nodrop):
    """One run per ZeRO stage (the test's parametrisation), shared by every test of that stage."""
    tmp = tmp_path_factory.mktemp(f"lora_zero{request.param}")
    results = run_ranks(_train_and_export, 2, tmp, str(tiny_model_nodrop), str(DATA), str(tmp / "run"), request.param)
    return {"stage": request.param, "model": tiny_model_nodrop, **results[0]}


def _expected_counts(model_dir) -> tuple[int, int]:
    """Trainable parameters from the config: r x (in + out) per target Linear, plus the fully trained parts."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(model_dir))
    h, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    adapters = layers * 2 * R * (h + h)  # query and value: Linear(h, h)
    dense = h * h + h
    cross_attention = layers * (4 * (h * h + h) + 2 * h)  # query, key, value, output + LayerNorm
    lm_head = (h * h + h) + 2 * h + vocab  # transform dense + LayerNorm, output bias
    n_classes = len({json.loads(line)["label"] for line in DATA.read_text().splitlines()})
    head = (h * HEAD_HIDDEN + HEAD_HIDDEN) + (HEAD_HIDDEN * n_classes + n_classes)
    return adapters + dense + cross_attention + lm_head, adapters + dense + head


@ZERO_2_AND_3
def test_trainable_parameter_count_matches_the_config(trained):
    dae, ft = _expected_counts(trained["model"])
    assert trained["dae_count"] == dae
    assert trained["ft_count"] == ft


@ZERO_2_AND_3
def test_exported_adapter_is_non_empty_and_holds_the_trained_values(trained):
    from dcl_dist.models.lora import read_adapter

    exported = read_adapter(trained["exports"]["adapter"])
    dae = read_adapter(trained["dae_adapter"])
    assert exported.config.r == 2 * R and exported.scaling == 1.0 and exported.base == str(trained["model"])
    lora_keys = sorted(k for k in trained["trained"] if ".lora_" in k)
    assert len(lora_keys) == 2 * 2 * 2  # layers x (query, value) x (A, B)
    for key in lora_keys:
        name = key.replace(".default", "").removeprefix("encoder.backbone.")
        value, stacked = trained["trained"][key], exported.weights[name]
        assert value.numel() > 0 and stacked.numel() > 0
        if ".lora_A." in key:  # rows: dae's adapter, then ft's
            assert torch.equal(stacked[R:], value)
            assert torch.equal(stacked[:R], dae.weights[name])
        else:  # columns, each scaled by its alpha / r
            assert torch.count_nonzero(value) > 0  # B starts at 0: ft trained it
            assert torch.equal(stacked[:, R:], value * (ALPHA / R))
            assert torch.equal(stacked[:, :R], dae.weights[name] * (ALPHA / R))
    from safetensors.torch import load_file

    head = load_file(f"{trained['exports']['adapter']}/head/model.safetensors")
    for name, value in head.items():
        assert torch.equal(value, trained["trained"][f"head.{name}"])


@ZERO_2_AND_3
def test_merged_and_adapter_forms_give_the_trained_logits(trained):
    from dcl_dist.inference import Predictor

    logits = {}
    for form in ("adapter", "merged", "sentence-transformers"):
        predictor = Predictor.load(trained["exports"][form])
        batch = predictor.tokenize(PROBE)
        with torch.no_grad():
            logits[form] = predictor.model(batch["input_ids"], batch["attention_mask"])
    assert (logits["merged"] - logits["adapter"]).abs().max() <= 1e-5
    assert (logits["adapter"] - trained["logits"]).abs().max() <= 1e-5
    assert torch.equal(logits["sentence-transformers"], logits["merged"])


@ZERO_2_AND_3
def test_adapter_opens_with_peft_on_the_base_model(trained):
    from peft import PeftModel
    from transformers import AutoModel

    from dcl_dist.models.artifact import load_artifact

    folder = trained["exports"]["adapter"]
    theirs = PeftModel.from_pretrained(AutoModel.from_pretrained(str(trained["model"])), folder).eval()
    ours = load_artifact(folder).encoder.backbone.eval()
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    with torch.no_grad():
        assert torch.allclose(theirs(input_ids=ids).last_hidden_state, ours(input_ids=ids).last_hidden_state, atol=1e-6)


@ZERO_2_AND_3
def test_sentence_transformers_export_embeds_like_the_trained_encoder(trained):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(trained["exports"]["sentence-transformers"], device="cpu")
    theirs = torch.tensor(st.encode(PROBE))
    assert (theirs - trained["embeddings"]).abs().max() <= 1e-5


@ZERO_3
def test_zero3_writer_refuses_ungathered_partitions(trained):
    assert "zero dimension" in trained["ungathered"]
