"""The image modality's sample grids: a data set without a test split (FFHQ built for FID, all images in
train) trains and shows reconstructions of train images, saying so in the tag."""

import torch
from eval_helpers import TINY_MODEL, build_image_set, disk_images, tiny_run_config

from sivae.core.schedule import position
from sivae.models import build_model
from sivae.train.image_modality import ImageModality


class Recorder:
    def __init__(self):
        self.tags = []

    def write_image(self, tag, array, images):
        self.tags.append((tag, array.shape))


def test_reconstructions_come_from_the_test_split_or_else_from_train_images_said_in_the_tag(tmp_path):
    model = build_model(TINY_MODEL).eval()
    shown = {}
    for fraction in (0.0, 0.25):
        data = build_image_set(tmp_path / str(fraction), disk_images(24, 16, seed=0), test_fraction=fraction)
        cfg = tiny_run_config(data)
        modality = ImageModality(cfg, torch.device("cpu"))
        modality.check()  # training needs only the train split
        pos = position(cfg.train.schedule, 3.5)  # kimg: mid-fade into 16px
        assert 0 < pos.blend < 1 and pos.resolution == 16
        recorder = Recorder()
        with torch.no_grad():
            modality.write_samples(model, pos, 3500, recorder)
        shown[fraction] = [tag for tag, _ in recorder.tags]
    assert shown == {0.0: ["samples", "reconstructions_of_train_images"], 0.25: ["samples", "reconstructions"]}
