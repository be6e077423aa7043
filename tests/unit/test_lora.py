"""LoRA on the backbone: the tied decoder shares the adapters, composing adapters equals merging them one after
the other, the automatic targets fit every listed model type, and a phase starts from merged or carried adapters."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from dcl_dist.config import LoraConfig, load_config
from dcl_dist.errors import ModelError
from dcl_dist.models import lora
from dcl_dist.models.artifact import load_artifact, write_artifact
from dcl_dist.models.decoder import freeze_body, load_decoder, tie_to_encoder
from dcl_dist.models.encoder import SentenceEncoder, load_backbone
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.start import load_start
from dcl_dist.rundir import RunDir

IDS = torch.tensor([[101, 2000, 2001, 2002, 2003, 102]])


def _randomise_adapters(backbone: torch.nn.Module, seed: int) -> None:
    """A fresh adapter has B = 0 (it changes nothing); give A and B values so that it does."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.adapter_layers(backbone).values():
            for part in (layer.lora_A, layer.lora_B):
                weight = part[lora.ADAPTER_NAME].weight
                weight.copy_(0.1 * torch.randn(weight.shape, generator=gen))


def _states(backbone: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(input_ids=IDS, attention_mask=torch.ones_like(IDS)).last_hidden_state


def test_tied_decoder_shares_the_lora_layers_and_stays_causal(tiny_model_nodrop):
    encoder = SentenceEncoder(load_backbone(str(tiny_model_nodrop)), "mean", n_dense=1)
    lora.add_adapter(encoder.backbone, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    _randomise_adapters(encoder.backbone, 0)
    decoder = load_decoder(str(tiny_model_nodrop))
    freeze_body(decoder)
    tie_to_encoder(decoder, encoder.backbone)

    encoder_query = encoder.backbone.encoder.layer[0].attention.self.query
    assert isinstance(encoder_query, lora.LoraLayer)
    assert decoder.base_model.encoder.layer[0].attention.self.query is encoder_query
    assert (
        decoder.base_model.encoder.layer[1].attention.self.value
        is encoder.backbone.encoder.layer[1].attention.self.value
    )
    encoder_params = {id(p) for p in encoder.parameters()}
    own_trainable = {n for n, p in decoder.named_parameters() if p.requires_grad and id(p) not in encoder_params}
    assert own_trainable and all("crossattention" in n or n.startswith("cls.") for n in own_trainable), own_trainable
    frozen_own = {n for n, p in decoder.named_parameters() if not p.requires_grad and id(p) not in encoder_params}
    assert frozen_own == set(), frozen_own  # tied: the whole body is the encoder's
    assert not decoder.get_output_embeddings().weight.requires_grad  # the word embeddings stay frozen

    def decoder_states(ids: torch.Tensor) -> torch.Tensor:
        """The decoder body's token states (batch, seq, hidden), reading one sentence vector as its memory."""
        return decoder.base_model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            encoder_hidden_states=torch.randn(1, 1, encoder.hidden_size, generator=torch.Generator().manual_seed(1)),
            encoder_attention_mask=torch.ones(1, 1, dtype=torch.long),
            use_cache=False,
        ).last_hidden_state

    decoder.eval()
    with torch.no_grad():
        states = decoder_states(IDS)
        changed = IDS.clone()
        changed[0, 4] = 3000
        states_changed = decoder_states(changed)
    assert torch.allclose(states[0, :4], states_changed[0, :4])  # earlier positions do not see a later token
    assert not torch.allclose(states[0, 4], states_changed[0, 4])

    # the decoder alone (no encoder forward) trains the encoder's adapter through the shared layer
    decoder_states(IDS).pow(2).mean().backward()
    for part in (encoder_query.lora_A, encoder_query.lora_B):
        grad = part[lora.ADAPTER_NAME].weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert encoder_query.base_layer.weight.grad is None  # the pretrained weight is frozen


def test_composed_adapter_equals_merging_one_after_the_other(tiny_model_nodrop):
    cfg = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)
    first_model = load_backbone(str(tiny_model_nodrop))
    lora.add_adapter(first_model, cfg)
    _randomise_adapters(first_model, 1)
    first = lora.trained_adapter(first_model, str(tiny_model_nodrop))

    merged_once = load_backbone(str(tiny_model_nodrop))
    merged_once.load_state_dict(lora.merged_state_dict(first_model))
    assert torch.allclose(_states(merged_once), _states(first_model), atol=1e-5)
    lora.add_adapter(merged_once, LoraConfig(enabled=True, r=2, alpha=6, dropout=0.0))
    _randomise_adapters(merged_once, 2)
    second = lora.trained_adapter(merged_once, "unused")

    composed = lora.compose(first, second)
    assert composed.config.r == 6 and composed.scaling == 1.0 and composed.base == str(tiny_model_nodrop)
    on_base = load_backbone(str(tiny_model_nodrop))
    lora.load_adapter(on_base, composed, trainable=False)
    assert torch.allclose(_states(on_base), _states(merged_once), atol=1e-5)
    assert not torch.allclose(_states(on_base), _states(first_model), atol=1e-3)


@pytest.mark.parametrize("model_type", sorted(lora.AUTO_TARGET_MODULES))
def test_automatic_targets_exist_in_every_listed_model_type(model_type):
    config = AutoConfig.for_model(model_type)
    config.num_hidden_layers = 1
    assert lora.config_target_problems(config, "auto", model_type) == []


def test_unknown_target_modules_are_one_config_problem_naming_what_exists(tiny_model):
    from dcl_dist.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                f"data.train={tiny_model / 'config.json'}",
                f"model.name_or_path={tiny_model}",
                "lora.enabled=true",
                "lora.target_modules=[query, qkv]",
                "lora.alpha=0",
            ],
        )
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 2, text
    assert "'lora.target_modules' names qkv" in text and "dense, key, query, value" in text
    assert "lora.alpha" in text
    config = AutoConfig.for_model("distilbert")
    config.n_layers = 1
    (problem,) = lora.config_target_problems(config, ["query"], "distilbert-base-uncased")
    assert "k_lin, lin1, lin2, out_lin, q_lin, v_lin" in problem


def _dae_artifact(tmp_path, base, merge: bool):
    """A phase-dae artifact trained with LoRA (adapter values set by hand), and the config of the next phase."""
    encoder = SentenceEncoder(load_backbone(str(base)), "mean", n_dense=1)
    lora.add_adapter(encoder.backbone, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    _randomise_adapters(encoder.backbone, 3)
    adapter = lora.trained_adapter(encoder.backbone, str(base))
    meta = {
        "phase": "dae",
        "lineage": [{"phase": "dae"}],
        "lora": {"base": str(base), "rank": 4, "phases": ["dae"], "merge_between_phases": merge},
    }
    path = tmp_path / "dae" / "artifact"
    write_artifact(path, encoder, AutoTokenizer.from_pretrained(str(base)), meta, 24, adapter=adapter)
    cfg = load_config(
        None,
        [
            f"data.train={base / 'config.json'}",
            f"model.name_or_path={base}",
            "run.variant=dae_ft",
            "lora.enabled=true",
            "lora.r=4",
            "lora.alpha=8",
            f"lora.merge_between_phases={str(merge).lower()}",
        ],
    )
    return path, encoder, adapter, cfg


def test_merged_chain_starts_a_fresh_adapter_on_the_merged_weights(tmp_path, tiny_model_nodrop):
    path, trained, _, cfg = _dae_artifact(tmp_path, tiny_model_nodrop, merge=True)
    assert set(json.loads((path / "adapter" / "adapter_config.json").read_text())["target_modules"]) == {
        "query",
        "value",
    }
    plain = AutoModel.from_pretrained(str(path))  # the artifact itself is a plain model with the adapter merged
    assert torch.allclose(_states(plain), _states(trained.backbone), atol=1e-5)

    encoder, _ = load_start(PhaseContext(cfg, RunDir(tmp_path), None, str(path)), "ft")
    layer = encoder.backbone.encoder.layer[0].attention.self.query
    assert torch.count_nonzero(layer.lora_B[lora.ADAPTER_NAME].weight) == 0  # fresh
    assert torch.equal(layer.base_layer.weight, plain.encoder.layer[0].attention.self.query.weight)
    assert torch.allclose(_states(encoder.backbone), _states(trained.backbone), atol=1e-5)


def test_carried_chain_continues_the_adapter_on_the_base_weights(tmp_path, tiny_model_nodrop):
    path, trained, adapter, cfg = _dae_artifact(tmp_path, tiny_model_nodrop, merge=False)
    encoder, _ = load_start(PhaseContext(cfg, RunDir(tmp_path), None, str(path)), "ft")
    base = AutoModel.from_pretrained(str(tiny_model_nodrop))
    layer = encoder.backbone.encoder.layer[0].attention.self.query
    assert torch.equal(layer.base_layer.weight, base.encoder.layer[0].attention.self.query.weight)
    key = "encoder.layer.0.attention.self.query.lora_B.weight"
    assert torch.equal(layer.lora_B[lora.ADAPTER_NAME].weight, adapter.weights[key])
    assert layer.lora_B[lora.ADAPTER_NAME].weight.requires_grad and not layer.base_layer.weight.requires_grad
    assert torch.allclose(_states(encoder.backbone), _states(trained.backbone), atol=1e-5)


def test_a_tensor_with_a_zero_dimension_is_never_written(tmp_path, tiny_model):
    encoder = SentenceEncoder(load_backbone(str(tiny_model)), "mean", n_dense=1)
    lora.add_adapter(encoder.backbone, LoraConfig(enabled=True))
    adapter = lora.trained_adapter(encoder.backbone, str(tiny_model))
    key = next(iter(adapter.weights))
    adapter.weights[key] = torch.empty(0)  # what a ZeRO-3 partition looks like outside a gather
    with pytest.raises(ModelError, match="zero dimension"):
        write_artifact(tmp_path / "a", encoder, AutoTokenizer.from_pretrained(str(tiny_model)), {}, 24, adapter=adapter)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
    with pytest.raises(ModelError, match="no such model folder"):
        load_artifact(tmp_path / "a")
