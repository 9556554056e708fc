"""The Python SDK's example app (the one in the README).

hopper serve &                                   # or any server: HOPPER_SERVER=...
python -m hopper deploy examples/python/shop.py
python -m hopper run examples/python/shop.py resize '"https://example.com/a.png"'
python examples/python/shop.py                   # calls the deployed functions
"""

import logging

import hopper

app = hopper.App("shop")


@app.function(timeout="60s", retries=3, concurrency=8)
def resize(url: str) -> dict:
    print("resizing", url)  # lands in this input's log, not in another's
    return {"url": url, "ok": True}


@app.function(batch=hopper.Batch(max_size=32, wait="50ms"), max_workers=4)
def embed(texts: list[str]) -> list[list[float]]:  # batched: a list in, a list out
    return [[float(len(t))] for t in texts]


@app.cls(concurrency=4, min_workers=1)
class Model:
    @hopper.enter()
    def load(self) -> None:  # once per worker process, before any input
        logging.getLogger("shop").warning("loading the model")
        self.weights = 2.0

    @hopper.method()
    def predict(self, x: float) -> float:
        return x * self.weights


@app.function(schedule=hopper.Cron("0 3 * * *", timezone="Europe/Berlin"))
def nightly() -> None:
    print("the nightly report")


@app.function(schedule=hopper.Period("15m"))
def refresh() -> None:
    print("refreshing")


if __name__ == "__main__":
    # Any other program can do the same: hopper.Function.from_name("shop.resize").
    call = resize.spawn("https://example.com/a.png")
    print("spawned", call.object_id)
    print(hopper.FunctionCall.from_id(call.object_id).get(timeout=30))
    print(resize.remote("https://example.com/b.png"))
    print(list(embed.map(["a", "bb", "ccc"])))
    print(list(hopper.Function.from_name("shop.Model.predict").map(range(5))))
