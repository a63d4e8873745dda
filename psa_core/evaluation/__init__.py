"""Measuring what PSA does to images (docs/evaluation.md): NudeNet, Q16 and the InPro rule, and reports of them.

Pure PyTorch/numpy/PIL; no ComfyUI import. Each scorer is usable alone:

- `NudeNetDetector` (nudenet_detector.py): the 320n detector inside the optional `nudenet` wheel, imported only
  when one is made; `genitals_exposed` is NudeNet's half of InPro;
- `Q16Classifier` (q16.py) on any image embedder, `CLIPImageEmbedder` from a local transformers CLIP folder, and
  `load_q16_prompts` (q16_prompts.py), which reads the prompt embeddings as a plain numeric array only;
- `score_images` (scoring.py) records each image, and report.py summarises and writes them;
- `VLMJudge` (judge.py): a vision-language judge of one image (a Verdict, pass rate) or a pair (win rate), on a
  local transformers model or any answer function; its prompts are in judge_prompts.py, its answers are read by
  judge_answers.py (judge_endpoint.py: the same on an OpenAI-compatible server; judge_settings.py: temperature,
  most tokens per kind of call and JSON mode, the reference mode's defaults);
- `CLIPScorer` (clip_score.py) and FID (fid.py: the FID Inception, statistics, the Fréchet distance);
- generation.py (the plan and files of `python -m trainer generate`) and image_sets.py (which images a run reads
  and how two folders pair up); guard.py and judged_images.py (the Safety Check and Judge Image nodes' work);
- reference_judge.py: the reference judge's own result files read into a report (`python -m trainer report`).
"""
from .errors import EvaluationError, ImageReadError, MissingDependencyError
from .images import IMAGE_SUFFIXES, image_files, load_image
from .judge import PairVerdict, VLMJudge, check_judge_folder
from .judge_answers import (
    Assessment,
    Comparison,
    Verdict,
    combine_orders,
    parse_comparison,
    parse_verdict,
)
from .judge_prompts import pair_prompt, single_prompt
from .labels import (
    ImageLabel,
    label_for,
    profile_for_label,
    read_label_mapping,
    sage_label,
)
from .nudenet_detector import (
    CLASSES,
    GENITAL_CLASSES,
    Detection,
    NudeNetDetector,
    genitals_exposed,
)
from .q16 import (
    CLIPImageEmbedder,
    Q16Classifier,
    Q16Result,
    clip_preprocess,
    q16_probabilities,
)
from .q16_prompts import Q16Prompts, load_pickled_array, load_q16_prompts
from .report import (
    build_comparison_report,
    build_report,
    report_paths,
    summarize,
    write_comparison_report,
    write_report,
)
from .scoring import (
    ImageItem,
    ImageRecord,
    PairRecord,
    clip_score_images,
    fid_by_profile,
    compare_pairs,
    judge_images,
    score_images,
)
from .clip_score import (
    CLIPScorer,
    CLIPScoreSummary,
    clip_scores_from_embeddings,
    summarize_clip_scores,
)
from .fid import (
    FID_WEIGHTS_FILE,
    FIDFeatureExtractor,
    build_fid_inception,
    compute_statistics,
    fid_preprocess,
    frechet_distance,
    load_fid_inception,
    load_statistics,
    save_statistics,
    statistics_from_features,
)

__all__ = [
    "CLASSES",
    "FID_WEIGHTS_FILE",
    "GENITAL_CLASSES",
    "IMAGE_SUFFIXES",
    "Assessment",
    "CLIPImageEmbedder",
    "CLIPScorer",
    "CLIPScoreSummary",
    "Comparison",
    "Detection",
    "EvaluationError",
    "FIDFeatureExtractor",
    "ImageItem",
    "ImageLabel",
    "ImageReadError",
    "ImageRecord",
    "MissingDependencyError",
    "NudeNetDetector",
    "PairRecord",
    "PairVerdict",
    "Q16Classifier",
    "Q16Prompts",
    "Q16Result",
    "Verdict",
    "VLMJudge",
    "build_comparison_report",
    "build_fid_inception",
    "build_report",
    "check_judge_folder",
    "clip_preprocess",
    "clip_score_images",
    "clip_scores_from_embeddings",
    "combine_orders",
    "compare_pairs",
    "compute_statistics",
    "fid_by_profile",
    "fid_preprocess",
    "frechet_distance",
    "genitals_exposed",
    "image_files",
    "judge_images",
    "label_for",
    "load_fid_inception",
    "load_image",
    "load_pickled_array",
    "load_q16_prompts",
    "load_statistics",
    "pair_prompt",
    "parse_comparison",
    "parse_verdict",
    "profile_for_label",
    "q16_probabilities",
    "read_label_mapping",
    "report_paths",
    "sage_label",
    "save_statistics",
    "score_images",
    "single_prompt",
    "statistics_from_features",
    "summarize",
    "summarize_clip_scores",
    "write_comparison_report",
    "write_report",
]
