"""Document OCR behind a web app: the Hopper side. `recognise` takes an image's bytes and
returns the text Tesseract reads in it.

    python -m hopper deploy examples/ocr/ocr.py
"""

from __future__ import annotations

import io

import hopper

app = hopper.App("ocr")


@app.function(timeout="120s", retries=2, concurrency=2)
def recognise(image: bytes, lang: str = "eng") -> dict:
    """``{"text", "width", "height"}`` of the image (PNG, JPEG, TIFF, ...: what Pillow opens).

    Raises:
        hopper.NoRetry: the bytes are not an image (retrying cannot help).
    """
    import pytesseract
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(image))
        picture.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = f"the upload is not an image Pillow can read ({len(image)} bytes): {e}"
        raise hopper.NoRetry(ValueError(reason)) from None
    text = pytesseract.image_to_string(picture.convert("L"), lang=lang)
    print(f"recognised {len(text)} characters in a {picture.width}x{picture.height} image")
    return {"text": text.strip(), "width": picture.width, "height": picture.height}
