"""The networks: the fMRI encoder and the inflated video UNet (the VAE is diffusers' ``AutoencoderKL``)."""

from mindvideo.models.fmri_encoder import FMRIEncoder, FMRIEncoderConfig
from mindvideo.models.unet import VideoUNet, VideoUNetConfig

__all__ = ["FMRIEncoder", "FMRIEncoderConfig", "VideoUNet", "VideoUNetConfig"]
