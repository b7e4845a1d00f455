"""The training input in one pass: ``augment`` turns decoded uint8 images into the network's input.

For output image m (one crop of source image n = params[m, 0]), channel c, row r and column j:

    out[m, c, r, j] = src[n, c, top + r, left + j'] * gain + shift[m, c],   j' = j, or crop-1-j if flipped

with gain = input_scale / 255 and shift = (PCA colour shift - mean) * input_scale: exactly
``train.data.Preprocess``'s ((pixel / 255 + rgb) - mean) * input_scale, up to float32 rounding (one
multiply-add instead of a division, an addition, a subtraction and a multiply). The crop's corner, the flip
and the colour shift come per output image from the host (``params``, ``shift``), drawn there from the same
per-sample seeds as the CPU transform (train/gpu_loader.py), so both loaders give the same batch. The
source is uint8, (N, 3, H, W) (``torchvision.io.decode_jpeg``'s layout) or (N, H, W, 3); the output is
(M, 3, crop, crop) in float32, float16 or bfloat16, NCHW or channels_last.

Cost (the budget is ~6 thread-instructions per minimal byte, bench/tools/README.md): a program owns a
BLOCK_R x BLOCK_C tile of one output image (rows from the program id, contiguous columns from an arange;
the last tiles overlap their neighbours instead of masking), reads the image's crop corner, flip and colour
shift once, computes the flip per column, and per element and channel does an address, a byte load, a
convert, one FMA, a convert to the output type and a store. Per-image offsets are int64 scalars,
per-element ones int32. Read from the sm_90a SASS (bench/tools/sass_cost.py's machinery, batch 256, 256x256
images, 227x227 crops; ``python bench/data_path.py --sass``): ~12 thread-instructions per element and
channel, 2.6 per minimal byte into float32 (1 + 4 bytes), 4.8 into bfloat16 (1 + 2), no spills.
"""

from __future__ import annotations

import torch

from ._common import Config, cdiv, launch, tl, triton, use_triton

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ------------------------------------------------------------------------------------- kernels

if triton is not None:

    @triton.jit
    def _augment_kernel(
        src_ptr,  # *u8 decoded images, (N, 3, H, W), or (N, H, W, 3) when SRC_HWC
        out_ptr,  # *T output (M, 3, CROP, CROP), NCHW, or channels_last when OUT_CL
        params_ptr,  # *i32 (M, 4): source image n, top, left, flip (0 or 1) of each output image
        shift_ptr,  # *f32 (M, 3): (colour shift - mean) * input_scale, per output image and channel
        gain,  # input_scale / 255
        H, W,  # source height and width
        CROP,  # output height and width (>= BLOCK_R and >= BLOCK_C)
        row_blocks, col_blocks,  # tiles per output image: cdiv(CROP, BLOCK_R) x cdiv(CROP, BLOCK_C)
        SRC_HWC: tl.constexpr,
        OUT_CL: tl.constexpr,
        BLOCK_R: tl.constexpr,  # output rows per program
        BLOCK_C: tl.constexpr,  # output columns per program
    ):
        # Tiles: rows from the program id, contiguous columns from an arange. The last tile of a row or
        # column of tiles is moved back to end at the crop's edge (overlapping its neighbour, which
        # writes the same values there): no tile needs a mask, no element an index compare.
        pid = tl.program_id(0)
        per_image = row_blocks * col_blocks
        m = pid // per_image  # two divisions per program, none per element
        rest = pid - m * per_image
        rb = rest // col_blocks
        cb = rest - rb * col_blocks
        r0 = tl.minimum(rb * BLOCK_R, CROP - BLOCK_R)
        c0 = tl.minimum(cb * BLOCK_C, CROP - BLOCK_C)
        # the output image's parameters, once per program
        n = tl.load(params_ptr + m * 4)
        top = tl.load(params_ptr + m * 4 + 1)
        left = tl.load(params_ptr + m * 4 + 2)
        flip = tl.load(params_ptr + m * 4 + 3)
        rows = r0 + tl.arange(0, BLOCK_R)
        cols = c0 + tl.arange(0, BLOCK_C)
        # output column j reads source column left + j, or left + CROP - 1 - j when flipped: computed per
        # column (a thread's rows share its columns), nothing per element
        step = 1 - 2 * flip
        scol = (left + flip * (CROP - 1)) + cols * step
        if SRC_HWC:
            src = src_ptr + n.to(tl.int64) * (H * W * 3) + top * (W * 3)
            s_off = (rows * (W * 3))[:, None] + (scol * 3)[None, :]
            s_ch = 1
        else:
            src = src_ptr + n.to(tl.int64) * (3 * H * W) + top * W
            s_off = (rows * W)[:, None] + scol[None, :]
            s_ch = H * W
        if OUT_CL:
            out = out_ptr + m.to(tl.int64) * (CROP * CROP * 3)
            o_off = (rows * (CROP * 3))[:, None] + (cols * 3)[None, :]
            o_ch = 1
        else:
            out = out_ptr + m.to(tl.int64) * (3 * CROP * CROP)
            o_off = (rows * CROP)[:, None] + cols[None, :]
            o_ch = CROP * CROP
        for c in tl.static_range(3):
            b = tl.load(shift_ptr + m * 3 + c)
            x = tl.load(src + c * s_ch + s_off).to(tl.float32)
            tl.store(out + c * o_ch + o_off, (x * gain + b).to(out_ptr.dtype.element_ty))


# ------------------------------------------------------------------------------------ launchers

_ELEMENTS_PER_PROGRAM = 2048  # per channel: 16 per thread at 4 warps
_MAX_BLOCK_C = 128


def _floor_pow2(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def _config(crop: int, rows_per_program: int | None) -> Config:
    """Tiles of at most 128 columns (227 = two tiles that overlap by 29 columns) and enough rows for
    ``_ELEMENTS_PER_PROGRAM`` elements, both powers of two no larger than the crop (tiles never leave it)."""
    block_c = min(_MAX_BLOCK_C, _floor_pow2(crop))
    block_r = rows_per_program or min(_floor_pow2(crop), max(1, _ELEMENTS_PER_PROGRAM // block_c))
    if block_r > crop or block_r & (block_r - 1):
        raise ValueError(f"augment: rows_per_program must be a power of two <= crop, got {block_r}")
    return Config(dict(BLOCK_R=block_r, BLOCK_C=block_c), num_warps=4)


def _check(images, params, shift, crop, dtype, layout):
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError("augment: images must be a 4-D uint8 tensor")
    if layout not in ("chw", "hwc"):
        raise ValueError(f"augment: layout must be 'chw' or 'hwc', got {layout!r}")
    channels = images.shape[1] if layout == "chw" else images.shape[3]
    if channels != 3:
        raise ValueError(f"augment: expected 3 channels in layout {layout}, got shape {tuple(images.shape)}")
    if params.dtype != torch.int32 or params.dim() != 2 or params.shape[1] != 4:
        raise TypeError("augment: params must be an int32 (M, 4) tensor")
    if shift.dtype != torch.float32 or tuple(shift.shape) != (params.shape[0], 3):
        raise TypeError("augment: shift must be a float32 (M, 3) tensor")
    if dtype not in OUT_DTYPES:
        raise TypeError(f"augment: dtype must be float32, float16 or bfloat16, got {dtype}")
    devices = {t.device for t in (images, params, shift)}
    if len(devices) > 1:
        raise RuntimeError(f"augment: expected all tensors on one device, got {sorted(map(str, devices))}")
    h, w = (images.shape[2], images.shape[3]) if layout == "chw" else (images.shape[1], images.shape[2])
    if not 1 <= crop <= min(h, w):
        raise ValueError(f"augment: crop {crop} does not fit images of {h}x{w}")
    if images.numel() >= 2**31:
        raise ValueError("augment: a batch of 2^31 bytes or more; split it")
    return h, w


def _augment_torch(images, params, shift, crop, gain, layout):
    """The same arithmetic with torch ops (a gather), for CPU tensors outside the interpreter."""
    src = images if layout == "chw" else images.permute(0, 3, 1, 2)
    p = params.long()
    j = torch.arange(crop, device=images.device)
    rows = p[:, 1:2] + j                                                  # (M, crop)
    cols = torch.where(p[:, 3:4] == 1, p[:, 2:3] + crop - 1 - j, p[:, 2:3] + j)
    n = p[:, 0].view(-1, 1, 1, 1)
    c = torch.arange(3, device=images.device).view(1, 3, 1, 1)
    x = src[n, c, rows[:, None, :, None], cols[:, None, None, :]].float()   # (M, 3, crop, crop)
    return x * gain + shift[:, :, None, None]


def augment(images: torch.Tensor, params: torch.Tensor, shift: torch.Tensor, crop: int, input_scale: float,
            dtype: torch.dtype = torch.float32, channels_last: bool = False, layout: str = "chw",
            rows_per_program: int | None = None) -> torch.Tensor:
    """Crop, flip, colour-shift, scale and cast decoded uint8 images in one kernel (see the module's
    docstring). ``params``: int32 (M, 4) rows (source image, top, left, flip); ``shift``: float32 (M, 3)
    rows ((colour shift - mean) * input_scale). Returns (M, 3, crop, crop) of ``dtype``."""
    h, w = _check(images, params, shift, crop, dtype, layout)
    m = params.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((m, 3, crop, crop), dtype=dtype, device=images.device, memory_format=fmt)
    gain = float(input_scale) / 255.0
    if m == 0:
        return out
    if not use_triton(images):
        out.copy_(_augment_torch(images, params.to(images.device), shift, crop, gain, layout))
        return out
    images, params, shift = images.contiguous(), params.contiguous(), shift.contiguous()
    cfg = _config(crop, rows_per_program)
    row_blocks = cdiv(crop, cfg.constexprs["BLOCK_R"])
    col_blocks = cdiv(crop, cfg.constexprs["BLOCK_C"])
    launch("augment", _augment_kernel, (m * row_blocks * col_blocks,),
           (images, out, params, shift, gain, h, w, crop, row_blocks, col_blocks), cfg, images.device,
           SRC_HWC=layout == "hwc", OUT_CL=channels_last)
    return out
