"""A model hub you can run here: the part of the Hugging Face Hub API that ``huggingface_hub`` uses to resolve
and download models, serving model folders from disk, with knobs for bandwidth, stalls, failures and auth."""
