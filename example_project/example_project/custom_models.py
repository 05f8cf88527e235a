"""A site's own model class, allowed in uploads through ALLOWED_MODEL_MODULES."""

from river import stats


class RunningMean:
    """Predicts the running mean of the targets it has seen (a "custom" flavor model).

    >>> model = RunningMean()
    >>> model.learn_one({}, 2.0)
    >>> model.learn_one({}, 4.0)
    >>> model.predict_one({})
    3.0
    """

    def __init__(self):
        self.mean = stats.Mean()

    def learn_one(self, x, y=None):
        if y is not None:
            self.mean.update(y)

    def predict_one(self, x):
        return self.mean.get()


class Fragile(RunningMean):
    """A running mean that cannot learn from the feature "boom", and finds out halfway through.

    It updates its mean before it raises, so a server must undo the half-done learn.

    >>> model = Fragile()
    >>> model.learn_one({"boom": 1}, 5.0)
    Traceback (most recent call last):
    ...
    ValueError: cannot learn from boom=1
    """

    def learn_one(self, x, y=None):
        super().learn_one(x, y)
        if "boom" in x:
            raise ValueError(f"cannot learn from boom={x['boom']!r}")
