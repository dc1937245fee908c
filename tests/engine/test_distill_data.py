"""Distillation data: caption sidecars and JSONL, clear errors, a data order fixed by (seed, step)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from linfusion_devkit.distill.data import (
    CaptionedImages, DistillDataError, StepSampler, find_examples, load_image, permutation, sample_index)


def _image(path, size=(80, 64), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_folder_with_sidecars_recursive_and_sorted(tmp_path):
    _image(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("  a blue cup \n")
    _image(tmp_path / "sub" / "a.jpg")
    (tmp_path / "sub" / "a.caption").write_text("a red cup")
    examples = find_examples(tmp_path)
    assert [(e.image.name, e.caption) for e in examples] == [("b.png", "a blue cup"), ("a.jpg", "a red cup")]


def test_image_without_caption_is_named(tmp_path):
    _image(tmp_path / "ok.png")
    (tmp_path / "ok.txt").write_text("fine")
    _image(tmp_path / "lonely.png")
    with pytest.raises(DistillDataError, match=r"1 image\(s\) have no caption sidecar.*lonely.png"):
        find_examples(tmp_path)


def test_jsonl_relative_paths_and_line_numbers(tmp_path):
    _image(tmp_path / "imgs" / "x.png")
    good = tmp_path / "train.jsonl"
    good.write_text(json.dumps({"image": "imgs/x.png", "caption": "an x"}) + "\n\n"
                    + json.dumps({"file_name": str(tmp_path / "imgs" / "x.png"), "text": "again"}) + "\n")
    examples = find_examples(good)
    assert [e.caption for e in examples] == ["an x", "again"]
    assert examples[0].image == tmp_path / "imgs" / "x.png"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "imgs/x.png", "caption": "ok"}) + "\n" + json.dumps({"image": "nope.png",
                                                                                          "caption": "c"}) + "\n")
    with pytest.raises(DistillDataError, match=r"bad.jsonl:2: image 'nope.png' does not exist"):
        find_examples(bad)
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DistillDataError, match=r"broken.jsonl:1: not valid JSON"):
        find_examples(tmp_path / "broken.jsonl")


def test_folder_with_metadata_jsonl_reads_it(tmp_path):
    _image(tmp_path / "x.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "text": "from metadata"}) + "\n")
    assert [e.caption for e in find_examples(tmp_path)] == ["from metadata"]


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(DistillDataError, match="no such folder or JSONL file"):
        find_examples(tmp_path / "absent")
    with pytest.raises(DistillDataError, match="no training images"):
        find_examples(tmp_path)


def test_load_image_centre_crops_to_a_square_in_range(tmp_path):
    array = np.zeros((64, 128, 3), dtype=np.uint8)
    array[:, 32:96] = 255  # white centre band, black sides
    Image.fromarray(array).save(tmp_path / "wide.png")
    pixels = load_image(tmp_path / "wide.png", 32)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    assert float(pixels.mean()) > 0.9  # the crop is the white centre, not a squashed whole


def test_sampler_depends_on_seed_and_position_only():
    count, batch = 5, 2
    stream = StepSampler(count, seed=3, batch_size=batch)
    it = iter(stream)
    whole = [next(it) for _ in range(40)]
    assert whole == [sample_index(p, count, 3) for p in range(40)]
    # every epoch is a permutation of the data set
    for epoch in range(8):
        assert sorted(whole[epoch * count:(epoch + 1) * count]) == list(range(count))
    # starting at micro-batch 7 gives what the uninterrupted stream gave from position 14 on
    resumed = iter(StepSampler(count, seed=3, batch_size=batch, start_batch=7))
    assert [next(resumed) for _ in range(10)] == whole[14:24]
    assert not np.array_equal(permutation(50, 3, 0), permutation(50, 4, 0))


def test_sampler_splits_global_batches_between_processes():
    count, batch, world = 7, 2, 3
    single = iter(StepSampler(count, seed=1, batch_size=batch * world))
    global_order = [next(single) for _ in range(batch * world * 4)]
    ranks = [iter(StepSampler(count, seed=1, batch_size=batch, rank=r, world=world)) for r in range(world)]
    rebuilt = []
    for _ in range(4):
        for r in ranks:
            rebuilt += [next(r) for _ in range(batch)]
    assert rebuilt == global_order


def test_dataset_items(tmp_path):
    _image(tmp_path / "a.png", value=0)
    (tmp_path / "a.txt").write_text("dark")
    dataset = CaptionedImages(find_examples(tmp_path), 16)
    item = dataset[0]
    assert item["caption"] == "dark" and item["pixels"].shape == (3, 16, 16)
    assert torch.allclose(item["pixels"], torch.full((3, 16, 16), -1.0))
    with pytest.raises(DistillDataError, match="multiple of 8"):
        CaptionedImages(dataset.examples, 20)
