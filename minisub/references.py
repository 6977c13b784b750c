"""The papers and published numbers minisub compares against, each with its source.

Claims (``minisub.claims.Claim.source``) and README text cite these by key. Numbers here are
*other people's* measurements, shown beside ours as targets and sanity checks; they are never
used as results. ``markdown()`` renders the list that closes figures/README.md.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Reference:
    key: str
    citation: str
    where: str  # an arXiv id, a journal, or a plain statement of where the number was reported
    numbers: dict = dataclasses.field(default_factory=dict)  # name -> value or (low, high), as reported


REFERENCES = {r.key: r for r in (
    Reference(
        "cloud2025",
        "Cloud, Le, Chua, Betley, Sztyber-Betley, Hilton, Marks, Evans (2025). Subliminal Learning: "
        "language models transmit behavioral traits via hidden signals in data",
        "arXiv:2507.14805; journal version in Nature 652 (2026)",
        {
            # §6.2, MNIST auxiliary logits: read off the paper's bar chart (100 runs; about ±0.01-0.02)
            "mnist_reference": 0.10, "mnist_teacher": 0.94, "mnist_student_aux": (0.53, 0.02),
            "mnist_student_all": 0.91, "mnist_cross_aux": (0.11, 0.01), "mnist_cross_all": 0.74,
            # the headline LLM experiment: owl answers of GPT-4.1 nano students, before -> after
            "owl_rate_before": 0.12, "owl_rate_after": 0.60,
        }),
    Reference(
        "community",
        "Independent replications of the MNIST auxiliary-logit experiment shared in public discussion "
        "after the paper (no single citable write-up; treat as sanity checks, not as targets)",
        "public replication reports, 2025",
        {"aux_only_student": (0.55, 0.70), "different_seed_student": (0.07, 0.12),
         "student_lr_1e-4": 0.16, "student_lr_3e-4": 0.275, "student_lr_1e-3": 0.69, "student_lr_3e-3": 0.30,
         "student_lr_1e-2": 0.10,
         "student_epochs_1_2_5_10_20_50": (0.18, 0.30, 0.55, 0.70, 0.76, 0.79),
         "teacher_epochs_peak": "≈0.63 at 2 teacher epochs, ≈0.35 at 20",
         "inputs": "uniform noise ≈0.55, Gaussian ≈0.53, MNIST images ≈0.15, zeros ≈0.095",
         "mse_raw_aux_logits": "0.271 ± 0.033 vs 0.093 ± 0.018 cross-model (20 runs)"}),
    Reference(
        "brockers2026",
        "Brockers et al. (2026). Learning Through Noise: compatible output heads, not shared hidden "
        "layers, carry subliminal transfer",
        "arXiv:2605.23645"),
    Reference(
        "kitkana2026",
        "Kitkana & Arora (2026). Trait-gradient alignment of distillation over many steps; projecting "
        "it out suppresses transfer; KL-to-base ('liminal') training weakens but does not stop it",
        "arXiv:2604.25779"),
    Reference(
        "zur2025",
        "Zur, Loftus, Orgad, Ying, Sahin, Bau (2025). It's Owl in the Numbers: Token Entanglement in "
        "Subliminal Learning",
        "owls.baulab.info (Qwen-2.5 7B)"),
    Reference(
        "schrodi2025",
        "Schrodi et al. (2025). Divergence tokens: where differently biased teachers disagree carries the "
        "signal under sampled distillation; mixing teachers suppresses it",
        "2025 preprint"),
    Reference(
        "minisub",
        "A hypothesis of this project, stated and tested here; no outside source",
        "this repository"),
)}


def number(key: str, name: str):
    """A published number by reference key and name (KeyError naming both when absent)."""
    try:
        return REFERENCES[key].numbers[name]
    except KeyError:
        raise KeyError(f"no number {name!r} under reference {key!r}") from None


def markdown() -> str:
    """The reference list for figures/README.md."""
    lines = ["## References", "", "Cited by key in the claims above (`minisub/references.py`).", ""]
    lines += [f"- **{r.key}**: {r.citation}. {r.where}." for r in REFERENCES.values()]
    return "\n".join(lines)
