"""The MLP mask head of the paper's Table 2e: fully connected layers predict the whole M x M mask.

Shapes:  pooled features (P, C, S, S) (S = mask_pool_size, 14) -> flatten (P, C*S*S)
         -> fc + ReLU (P, dim) -> fc + ReLU (P, dim) -> fc (P, K*M*M) -> mask_logits (P, K, M, M)
Why:     the FCN head (mask_head.py) keeps the m x m spatial layout all the way, each output pixel
         seeing a local window through shared weights; an fc layer sees all of the RoI at once but
         must learn every pixel's weights separately and loses the layout (the paper: "collapsed
         into a vector that lacks spatial dimensions"). The paper's rows: fc 1024 -> 1024 -> 80*28^2.
Init:    torch's nn.Linear default, as the box head's fc6/fc7. Names: mask_fc1, mask_fc2 (the head),
         mask_fcn_logits (the predictor), so RoIHeads calls mask_predictor(mask_head(x)) either way.
Chapter: nbs/10_mask_head.ipynb    Paper: Mask R-CNN (He et al. 2017), Table 2e
"""

from __future__ import annotations

from .layers import Linear, flatten, relu, reshape
from .module import Module


class MaskRCNNMLPHead(Module):
    """flatten -> mask_fc1 -> ReLU -> mask_fc2 -> ReLU: (P, C, S, S) -> (P, dim)."""

    def __init__(self, in_features, dim=1024, rng=None):
        super().__init__()
        self.mask_fc1 = Linear(in_features, dim, rng=rng)
        self.mask_fc2 = Linear(dim, dim, rng=rng)

    def forward(self, x):
        x = flatten(x, start_dim=1)                                 # (P, C*S*S)
        return relu(self.mask_fc2(relu(self.mask_fc1(x))))          # (P, dim)


class MaskRCNNMLPPredictor(Module):
    """mask_fcn_logits: one fc to K*M*M logits, reshaped (P, dim) -> (P, K, M, M)."""

    def __init__(self, dim, num_classes, mask_size, rng=None):
        super().__init__()
        self.num_classes, self.mask_size = num_classes, mask_size
        self.mask_fcn_logits = Linear(dim, num_classes * mask_size * mask_size, rng=rng)

    def forward(self, x):
        M = self.mask_size
        return reshape(self.mask_fcn_logits(x), shape=(x.shape[0], self.num_classes, M, M))   # (P, K, M, M)
