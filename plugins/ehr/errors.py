"""The one shape of the EHR plugin's input errors, shared by its modules."""


class InputError(Exception):
    """Input that cannot be accepted: ``errors`` maps each field (or place, such as
    ``answers.dob``) to what is wrong with it; ``status`` is the HTTP status it means."""

    def __init__(self, errors: dict[str, str], status: int = 422):
        super().__init__("; ".join(f"{key}: {value}" for key, value in errors.items()))
        self.errors = errors
        self.status = status
