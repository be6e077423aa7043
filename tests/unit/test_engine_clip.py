"""Gradient clipping at ZeRO stage 0 in fp32: PyTorch's clip, and the norm before clipping kept for the logs."""

import torch

from dcl_dist import engine
from dcl_dist.config import load_config


def test_stage_0_clips_and_reports_the_norm(tmp_path):
    overrides = [f"run.dir={tmp_path}", "data.train=unused.jsonl", "ft.micro_batch_size_per_rank=4"]
    cfg = load_config(None, [*overrides, "ft.max_grad_norm=0.5"], preflight=False)  # no data is read
    torch.manual_seed(0)
    model_engine = engine.initialize(torch.nn.Linear(8, 3), cfg, "ft", total_steps=4, hidden_size=8)
    assert engine.zero_stage(model_engine) == 0
    loss = (model_engine(torch.randn(4, 8)) * 100).sum()
    model_engine.backward(loss)
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model_engine.module.parameters()]))
    assert before > 0.5
    model_engine.step()
    assert abs(engine.grad_norm(model_engine) - before.item()) <= 1e-5 * before.item()

    model_engine.backward((model_engine(torch.randn(4, 8)) * 100).sum())
    model_engine.clip_fp32_gradients()
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model_engine.module.parameters()]))
    assert after <= 0.5 + 1e-6


def _bf16_engine(tmp_path, mixed_precision: str):
    overrides = [f"run.dir={tmp_path}", "data.train=unused.jsonl", "ft.micro_batch_size_per_rank=4"]
    cfg = load_config(
        None, [*overrides, "deepspeed.precision=bf16", f"deepspeed.mixed_precision={mixed_precision}"], preflight=False
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return engine.initialize(model, cfg, "ft", total_steps=4, hidden_size=8)


def test_autocast_trains_fp32_weights_with_torch_adamw_and_resumes_exactly(tmp_path):
    """deepspeed.mixed_precision=autocast: fp32 weights, bf16 matrix products, torch's AdamW, one state to save."""
    model_engine = _bf16_engine(tmp_path / "a", "autocast")
    assert not model_engine.bfloat16_enabled()  # DeepSpeed's own bf16 optimiser is off
    assert all(p.dtype == torch.float32 for p in model_engine.module.parameters())
    assert isinstance(model_engine.optimizer, torch.optim.AdamW)
    data = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 8, generator=data) for _ in range(4)]
    for x in batches[:2]:
        out = model_engine(x)
        assert out.dtype == torch.bfloat16
        model_engine.backward(out.float().pow(2).sum())
        model_engine.step()
    model_engine.save_checkpoint(str(tmp_path / "ckpt"), tag="step2")
    for x in batches[2:]:
        model_engine.backward(model_engine(x).float().pow(2).sum())
        model_engine.step()
    resumed = _bf16_engine(tmp_path / "b", "autocast")
    resumed.load_checkpoint(str(tmp_path / "ckpt"), tag="step2")
    for x in batches[2:]:
        resumed.backward(resumed(x).float().pow(2).sum())
        resumed.step()
    for a, b in zip(model_engine.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(a, b)
