"""transformers' own image loop vs jacobix on a real Janus or Emu3 checkpoint (GPU; weights from the Hub cache).

    python benchmarks/hf_images/run_gpu.py --family janus                      # deepseek-community/Janus-Pro-1B
    python benchmarks/hf_images/run_gpu.py --family emu3 --image-area 65536    # BAAI/Emu3-Gen-hf, 256x256 px

Prints the table of ``jacobix bench images --hf`` (transformer calls per image counted by a forward
hook on both sides, wall time, greedy tokens checked against transformers') and writes it as JSON
with ``--json``. Emu3's default image (720x720 px, 8,193 tokens) takes minutes per image in
transformers' loop; ``--image-area`` asks the processor for a smaller one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jacobix.bench.hf_images import HFImageBenchConfig, bench_hf_images

CHECKPOINTS = {"janus": "deepseek-community/Janus-Pro-1B", "emu3": "BAAI/Emu3-Gen-hf"}
PROMPTS = ["A red fox in fresh snow, photograph.", "A lighthouse on a cliff at sunset, oil painting.",
           "A bowl of ramen, studio lighting.", "An astronaut riding a horse, watercolor."]


def _janus(checkpoint: str, dtype: torch.dtype, images: int) -> tuple[object, list[dict]]:
    from transformers import JanusForConditionalGeneration, JanusProcessor

    processor = JanusProcessor.from_pretrained(checkpoint)
    model = JanusForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype, device_map="cuda").eval()
    inputs = []
    for text in PROMPTS[:images]:
        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs.append(processor(text=prompt, generation_mode="image", return_tensors="pt").to("cuda"))
    return model, inputs


def _emu3(checkpoint: str, dtype: torch.dtype, images: int, image_area: int | None) -> tuple[object, list[dict]]:
    from transformers import Emu3ForConditionalGeneration, Emu3Processor

    processor = Emu3Processor.from_pretrained(checkpoint)
    model = Emu3ForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype, device_map="cuda").eval()
    extra = {} if image_area is None else {"image_area": image_area}
    inputs = [processor(text=[text], return_for_image_generation=True, return_tensors="pt", **extra).to("cuda")
              for text in PROMPTS[:images]]
    return model, inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(CHECKPOINTS), required=True)
    parser.add_argument("--checkpoint", help="default: " + ", ".join(f"{k}: {v}" for k, v in CHECKPOINTS.items()))
    parser.add_argument("--images", type=int, default=2, help="images per setting (one per call)")
    parser.add_argument("--guidance-scale", type=float, help="default: the checkpoint's generation config")
    parser.add_argument("--image-area", type=int, help="emu3: pixels of the image (720*720 by default)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkpoint, dtype = args.checkpoint or CHECKPOINTS[args.family], getattr(torch, args.dtype)
    if args.family == "janus":
        model, inputs = _janus(checkpoint, dtype, args.images)
    else:
        model, inputs = _emu3(checkpoint, dtype, args.images, args.image_area)
    scale = args.guidance_scale if args.guidance_scale is not None else model.generation_config.guidance_scale
    config = HFImageBenchConfig(family=args.family, prompts=len(inputs), guidance_scale=float(scale or 1.0))
    result = bench_hf_images(config, model=model, inputs=inputs)
    print(f"{checkpoint} on {torch.cuda.get_device_name()}, {args.dtype}")
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.records(), indent=2) + "\n")


if __name__ == "__main__":
    main()
