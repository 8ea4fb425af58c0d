"""Password rules: long enough, and not easy to guess.

zxcvbn ships the 30,000 most common leaked passwords and scores how guessable a password
is against them, dictionaries and the user's own name and email; hand-written rules
(digits, symbols) reward "Password1!" and punish long passphrases.
"""

from __future__ import annotations

from zxcvbn import zxcvbn
from zxcvbn.frequency_lists import FREQUENCY_LISTS

MIN_LENGTH = 12
MAX_LENGTH = 256  # longer input is refused rather than hashed (denial of service)
MIN_SCORE = 3  # zxcvbn: "safely unguessable: moderate protection from offline attacks"
# zxcvbn's cost grows quickly with length, and from 4.5 it raises ValueError past 72
# characters: only the start of a longer passphrase is scored.
SCORED_LENGTH = 72
COMMON = frozenset(FREQUENCY_LISTS["passwords"])


def problems(password: str, *, email: str = "", name: str = "") -> list[str]:
    """Why ``password`` is refused, in plain sentences; empty when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return [f"Use at least {MIN_LENGTH} characters."]
    if len(password) > MAX_LENGTH:
        return [f"Use at most {MAX_LENGTH} characters."]
    if password.lower() in COMMON:
        return ["This password is on a list of common passwords; choose another."]
    result = zxcvbn(password[:SCORED_LENGTH], user_inputs=[email, name, *email.split("@")])
    if result["score"] < MIN_SCORE:
        warning = result["feedback"]["warning"] or "It is too easy to guess."
        return [f"{warning.rstrip('.')}. Try a longer phrase of unrelated words."]
    return []
