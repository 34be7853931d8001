"""placeholder"""


def register(forms, add_common) -> None:
    pass
