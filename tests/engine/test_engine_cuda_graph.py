"""The graphed loop: its eager twin equals the C loop on CPU; capture/replay equals eager on a GPU."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mindvideo.engine import make_plan, run_loop
from mindvideo.engine.cuda_graph import GraphCache, GraphedLoop
from mindvideo.errors import MindVideoError
from mindvideo.models import VideoUNet, VideoUNetConfig
from mindvideo.sampling import initial_latents, initial_noise, make_scheduler, step_noise

SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = VideoUNet(VideoUNetConfig.tiny()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("kind", ["ddim", "dpm", "euler"])
def test_eager_twin_equals_the_c_loop(unet, kind):
    plan = make_plan(make_scheduler(SCHEDULER, kind), 4)
    latents = initial_latents((1, 4, 3, 8, 8), 0, plan.init_noise_sigma)
    cond = torch.randn(2, 8, 32)
    loop = GraphedLoop(unet, plan, latents.shape, cond.shape, guidance_scale=7.5, dtype=torch.float32, device="cpu")
    ours = loop.run_eager(latents, cond)

    def denoise(x, t, c):
        with torch.no_grad():
            return unet(torch.from_numpy(x), torch.full((x.shape[0],), float(t)), c).contiguous().numpy()

    expected = run_loop(denoise, plan, latents.numpy(), cond, guidance_scale=7.5)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module")
def student(unet):
    """An LCM student of ``unet`` whose guidance embedding is not zero (so g changes its output)."""
    torch.manual_seed(1)
    model = VideoUNet.student_of(unet, schedulers=("lcm",)).eval()
    with torch.no_grad():
        for p in model.guidance_embedding.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("steps", [1, 4])
def test_eager_twin_of_a_single_pass_lcm_student_equals_the_c_loop(student, steps):
    """The device loop of a student: B rows, g from a static (B,) buffer, LCM noise from a static buffer filled
    before the run — equal to the C loop with g bound into ``denoise`` and the same precomputed step noise."""
    plan = make_plan(make_scheduler(SCHEDULER, "lcm"), steps)
    shape = (2, 4, 3, 8, 8)
    latents, generator = initial_noise(shape, 0, plan.init_noise_sigma)
    noise = step_noise(generator, shape, steps)
    cond = torch.randn(2, 8, 32)
    loop = GraphedLoop(
        student, plan, shape, cond.shape, guidance_scale=6.0, device="cpu", dtype=torch.float32, single_pass=True
    )
    ours = loop.run_eager(latents, cond, noise if plan.stochastic else None)
    calls = []

    def denoise(x, t, c, guidance):
        calls.append(x.shape)
        g = torch.full((x.shape[0],), guidance)
        with torch.no_grad():
            return student(torch.from_numpy(x), torch.full((x.shape[0],), float(t)), c, g).contiguous().numpy()

    expected = run_loop(
        functools.partial(denoise, guidance=6.0),
        plan,
        latents.numpy(),
        cond,
        guidance_scale=6.0,
        step_noise=noise.numpy(),
        single_pass=True,
    )
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert calls == [shape] * steps
    other_g = GraphedLoop(
        student, plan, shape, cond.shape, guidance_scale=2.0, device="cpu", dtype=torch.float32, single_pass=True
    )
    assert not torch.allclose(other_g.run_eager(latents, cond, noise if plan.stochastic else None), ours)


def test_stochastic_plans_need_their_noise_and_cpu_capture_is_refused(unet):
    plan = make_plan(make_scheduler(SCHEDULER, "lcm"), 3)
    loop = GraphedLoop(unet, plan, (1, 4, 2, 8, 8), (1, 8, 32), guidance_scale=1.0, device="cpu")
    latents, cond = torch.zeros(1, 4, 2, 8, 8), torch.zeros(1, 8, 32)
    with pytest.raises(MindVideoError, match="expected step noise of shape \\(2, 1, 4, 2, 8, 8\\)"):
        loop.run_eager(latents, cond)
    with pytest.raises(MindVideoError, match="found shape \\(3, 1, 4, 2, 8, 8\\)"):
        loop.run_eager(latents, cond, torch.zeros(3, 1, 4, 2, 8, 8))
    plan = make_plan(make_scheduler(SCHEDULER, "ddim"), 2)
    loop = GraphedLoop(unet, plan, (1, 4, 2, 8, 8), (2, 8, 32), guidance_scale=2.0, device="cpu")
    with pytest.raises(MindVideoError, match="CUDA"):
        loop.capture()


def test_graph_cache_reuses_and_bounds_its_loops(unet):
    """One loop per configuration, reused; the least recently used goes when the cache is full."""
    cache = GraphCache(unet, device="cpu", dtype=torch.float32, max_loops=2)
    plans = {steps: make_plan(make_scheduler(SCHEDULER, "dpm"), steps) for steps in (2, 3, 4)}
    shape, cond = (1, 4, 2, 8, 8), (2, 8, 32)
    two = cache.get(plans[2], shape, cond, 7.5)
    assert cache.get(plans[2], shape, cond, 7.5) is two and cache.get(plans[2], shape, cond, 5.0) is not two
    cache.get(plans[2], shape, cond, 7.5)  # most recently used again
    cache.get(plans[3], shape, cond, 7.5)  # evicts the guidance-5 loop, not `two`
    assert cache.get(plans[2], shape, cond, 7.5) is two and len(cache._loops) == 2
    cache.get(plans[4], shape, cond, 7.5)
    assert len(cache._loops) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ddim", "dpm"])
def test_graph_replay_equals_the_eager_loop_on_gpu(unet, kind):
    gpu_unet = VideoUNet(unet.config).cuda().eval()
    gpu_unet.load_state_dict(unet.state_dict())
    plan = make_plan(make_scheduler(SCHEDULER, kind), 5)
    latents = initial_latents((1, 4, 6, 8, 8), 0, plan.init_noise_sigma).cuda()
    cond = torch.randn(2, 8, 32, device="cuda")
    cache = GraphCache(gpu_unet, dtype=torch.float32)
    loop = cache.get(plan, latents.shape, cond.shape, 7.5)
    eager = loop.run_eager(latents, cond)
    first, again = loop(latents, cond), loop(latents, cond)  # capture, then a pure replay
    assert cache.get(plan, latents.shape, cond.shape, 7.5) is loop
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, first)


@pytest.mark.gpu
def test_lcm_student_graph_replay_equals_the_eager_loop_on_gpu(student):
    """A captured LCM student loop: static g and noise buffers; a replay with new noise follows the new noise."""
    gpu_student = VideoUNet(student.config).cuda().eval()
    gpu_student.load_state_dict(student.state_dict())
    plan = make_plan(make_scheduler(SCHEDULER, "lcm"), 4)
    shape = (1, 4, 6, 8, 8)
    latents, generator = initial_noise(shape, 0, plan.init_noise_sigma)
    noise = step_noise(generator, shape, 4).cuda()
    latents, cond = latents.cuda(), torch.randn(1, 8, 32, device="cuda")
    loop = GraphCache(gpu_student, dtype=torch.float32, single_pass=True).get(plan, shape, cond.shape, 6.0)
    eager = loop.run_eager(latents, cond, noise)
    first = loop(latents, cond, noise)  # capture, then replay
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-4)
    other = torch.randn_like(noise)
    torch.testing.assert_close(loop(latents, cond, other), loop.run_eager(latents, cond, other), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_runtime_graph_loop_equals_the_c_loop_on_gpu(tmp_path):
    """``mindvideo generate --backend torch --device cuda --loop graph`` path: the Runtime's captured loop gives the
    video of its C loop over the same CUDA backend (fp32)."""
    from mindvideo.checkpoint import build_random_checkpoint
    from mindvideo.engine.backends import TorchBackend
    from mindvideo.engine.runtime import Runtime
    from mindvideo.pipeline import GenerationConfig

    ckpt = build_random_checkpoint(tmp_path / "ckpt", "tiny", num_voxels=64, init_scale=0.02)
    backend = TorchBackend(ckpt, device="cuda")
    fmri = np.random.default_rng(0).standard_normal((2, 2, 64)).astype(np.float32)
    cfg = GenerationConfig(num_frames=6, num_inference_steps=5, scheduler="dpm", guidance_scale=7.5)
    graphed = Runtime(backend)
    assert graphed.loop == "graph"
    video, reference = (
        graphed(fmri, None, cfg, output="float"),
        Runtime(backend, loop="c")(fmri, None, cfg, output="float"),
    )
    assert np.abs(video - reference).max() <= 1e-3 * np.abs(reference).max()
