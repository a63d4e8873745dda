"""The standalone PSA trainer: Diffusion-DPO for a PSA adapter on a frozen SD1.5 or SDXL base.

    python -m trainer train --config run.yaml [--flag value ...]      (console script: psa-trainer)

The config file holds the flags by name (`base-model: model.safetensors`, `steps: 5000`, ...); flags given
on the command line override it. The base model is a diffusers folder or a single-file .safetensors checkpoint.
The run writes `<output>/psa_adapter.safetensors` (the project's adapter format, with metadata),
`train_log.jsonl`, `train_plot.png` and `checkpoints/checkpoint-<step>/` (resume with `--resume latest`).
Every value is checked before anything loads, and a finished adapter is only replaced with `--overwrite`.

Devices (🤗 Accelerate): CPU or one GPU as above; several GPUs with
    accelerate launch --multi_gpu --num_processes 8 -m trainer train --config run.yaml
and several machines with the same command on each, adding `--num_machines N --machine_rank R
--main_process_ip HOST --main_process_port PORT` (`--num_processes` counts all GPUs), or with
    torchrun --nnodes N --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:PORT -m trainer train ...
Keep `batch x accumulation x processes` (pairs per optimizer step) when changing the number of GPUs.

The training core itself (loss, data, cache, step, checkpoints) is `psa_core.training`, shared with the
ComfyUI training nodes; this package adds diffusers model loading, the UNet hooks, Accelerate and reporting.
"""
