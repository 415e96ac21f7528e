from twomod import a


def double_shift(x):
    return a.shift(a.shift(x)) * 1.5
