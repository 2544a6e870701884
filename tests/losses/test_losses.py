import numpy as np
import torch
import torch.nn.functional as F

from gcrdp.losses import symmetric_infonce


def naive_clip_loss(img: np.ndarray, txt: np.ndarray, tau: float) -> float:
    """Per-row loop: -log softmax over texts for each image, and over images for each text."""
    sims = img @ txt.T / tau
    b = sims.shape[0]
    i2t = [-(sims[i, i] - np.log(np.exp(sims[i]).sum())) for i in range(b)]
    t2i = [-(sims[i, i] - np.log(np.exp(sims[:, i]).sum())) for i in range(b)]
    return 0.5 * (np.mean(i2t) + np.mean(t2i))


def test_symmetric_infonce_matches_loop():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    got = symmetric_infonce(img, txt, 0.1).item()
    assert np.isclose(got, naive_clip_loss(img.numpy(), txt.numpy(), 0.1), rtol=1e-12)


def test_symmetric_infonce_is_low_for_aligned_and_symmetric():
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(16, 32, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(16, 32, generator=g, dtype=torch.float64), dim=-1)
    assert symmetric_infonce(x, x, 0.05) < symmetric_infonce(x, y, 0.05)
    assert torch.isclose(symmetric_infonce(x, y, 0.1), symmetric_infonce(y, x, 0.1))


def test_symmetric_infonce_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: symmetric_infonce(a, b, 0.5), (img, txt))
