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
