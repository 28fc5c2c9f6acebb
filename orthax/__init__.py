"""orthax: orthogonalised gradients for Optax (Tuddenham et al., arXiv 2202.07052)."""

from orthax import diagnostics as diagnostics
from orthax import masks as masks
from orthax import polar as polar
from orthax._src.alias import orthogonal_adam as orthogonal_adam
from orthax._src.alias import orthogonal_adamw as orthogonal_adamw
from orthax._src.alias import orthogonal_lars as orthogonal_lars
from orthax._src.alias import orthogonal_sgd as orthogonal_sgd
from orthax._src.attention import attention_layout as attention_layout
from orthax._src.attention import group_heads as group_heads
from orthax._src.cautious import add_cautious_decayed_weights as add_cautious_decayed_weights
from orthax._src.components import Layout as Layout
from orthax._src.components import LayoutSpec as LayoutSpec
from orthax._src.components import MaskSpec as MaskSpec
from orthax._src.components import layout_by_path as layout_by_path
from orthax._src.muon import MuonMomentumState as MuonMomentumState
from orthax._src.muon import muon as muon
from orthax._src.muon import muon_momentum as muon_momentum
from orthax._src.normuon import NormaliseNeuronsState as NormaliseNeuronsState
from orthax._src.normuon import normalise_neurons as normalise_neurons
from orthax._src.qk_clip import qk_clip as qk_clip
from orthax._src.speedrun import speedrun_muon as speedrun_muon
from orthax._src.transform import Method as Method
from orthax._src.transform import MethodName as MethodName
from orthax._src.transform import StepScale as StepScale
from orthax._src.transform import normalise as normalise
from orthax._src.transform import normalise_components as normalise_components
from orthax._src.transform import orthogonalise as orthogonalise
from orthax._src.transform import orthogonalise_components as orthogonalise_components

__version__ = "0.1.0"

__all__ = [
    "Layout",
    "LayoutSpec",
    "MaskSpec",
    "Method",
    "MethodName",
    "MuonMomentumState",
    "NormaliseNeuronsState",
    "StepScale",
    "add_cautious_decayed_weights",
    "attention_layout",
    "diagnostics",
    "group_heads",
    "layout_by_path",
    "masks",
    "muon",
    "muon_momentum",
    "normalise",
    "normalise_components",
    "normalise_neurons",
    "orthogonal_adam",
    "orthogonal_adamw",
    "orthogonal_lars",
    "orthogonal_sgd",
    "orthogonalise",
    "orthogonalise_components",
    "polar",
    "qk_clip",
    "speedrun_muon",
]
