"""Numbers: bounds, exact integer and decimal ranges, ``multipleOf``.

A leaf type: ``Numbers`` turns the number keywords of one schema into a rule
for the integers or decimals they allow, exactly and without exponents when
bounded, sharing equal digit and fraction rules across one grammar. It knows
nothing of other types or of subschemas. It imports ``rules``, ``charsets``
(digit classes) and ``values`` (keyword values as decimals).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, TypeAlias

from pollama.chat.grammar.charsets import char_class, normalize
from pollama.chat.grammar.rules import Grammar, is_atom, lit, paren, seq
from pollama.chat.grammar.values import as_decimal
from pollama.errors import UnsupportedSchema

__all__ = ["Numbers"]

_INT_DIGITS = 16  # unbounded integers: up to 16 digits (2^53 has 16)
_SIG_DIGITS = 15  # bounded numbers: every decimal with <= 15 digits survives a float parse


@dataclass(frozen=True)
class _Bound:
    value: Decimal
    inclusive: bool


_Edge: TypeAlias = tuple[str | None, bool]
"""One side of a fraction range: the bound's fraction digits and whether it is exclusive."""
_FREE: _Edge = (None, False)  # that side is already decided by the integer part


def _bounds(schema: Mapping[str, Any]) -> tuple[_Bound | None, _Bound | None]:
    """The tightest lower and upper bound among minimum, maximum and the exclusives."""
    lower: _Bound | None = None
    upper: _Bound | None = None

    def tighter(old: _Bound | None, new: _Bound, is_lower: bool) -> _Bound:
        if old is None:
            return new
        if new.value != old.value:
            return new if (new.value > old.value) == is_lower else old
        return new if not new.inclusive else old

    for keyword, exclusive_key, is_lower in (
        ("minimum", "exclusiveMinimum", True),
        ("maximum", "exclusiveMaximum", False),
    ):
        exclusive = schema.get(exclusive_key)
        draft4 = isinstance(exclusive, bool)  # draft 4: a flag on minimum/maximum
        if keyword in schema:
            bound = _Bound(as_decimal(schema[keyword], keyword), not (draft4 and exclusive))
            if is_lower:
                lower = tighter(lower, bound, True)
            else:
                upper = tighter(upper, bound, False)
        if exclusive is not None and not draft4:
            bound = _Bound(as_decimal(exclusive, exclusive_key), False)
            if is_lower:
                lower = tighter(lower, bound, True)
            else:
                upper = tighter(upper, bound, False)
    return lower, upper


def _split_decimal(value: Decimal) -> tuple[int, str]:
    """Integer part and fraction digits (no trailing zeros) of a non-negative decimal."""
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    return int(whole), frac.rstrip("0")


def _zero_fraction_ok(
    low: str | None, low_strict: bool, high: str | None, high_strict: bool
) -> bool:
    """Whether ending the fraction here (the rest all zeros) respects both bounds."""
    if low is not None:
        if low.strip("0"):
            return False
        if low_strict:
            return False
    if high is not None and not high.strip("0") and high_strict:
        return False
    return True


class Numbers:
    """Number rules for one grammar; equal fraction rules are built once."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        self._fractions: dict[tuple[str | None, bool, str | None, bool, int], str | None] = {}

    def number(self, schema: Mapping[str, Any], integer: bool) -> str:
        """GBNF for a number (or an integer) valid against the number keywords of ``schema``."""
        g = self.grammar
        lower, upper = _bounds(schema)
        fraction_digits: int | None = None  # None: as many as significance allows
        if "multipleOf" in schema:
            step = as_decimal(schema["multipleOf"], "multipleOf")
            if step <= 0:
                raise UnsupportedSchema("multipleOf", "must be greater than 0")
            if integer:
                if Decimal(1) % step != 0:
                    raise UnsupportedSchema(
                        "multipleOf", "only values that divide 1 are supported for integers"
                    )
            else:
                _, digits, exponent = step.normalize().as_tuple()
                if digits != (1,) or not isinstance(exponent, int) or exponent > 0:
                    raise UnsupportedSchema(
                        "multipleOf", "only 1, 0.1, 0.01, ... are supported for numbers"
                    )
                fraction_digits = -exponent
                integer = fraction_digits == 0
        if lower is None and upper is None and (integer or fraction_digits is None):
            return g.prim("integer" if integer else "number")
        if integer:
            return self._integer_range(lower, upper)
        return self._decimal_range(lower, upper, fraction_digits)

    def _integer_range(self, lower: _Bound | None, upper: _Bound | None) -> str:
        lo = hi = None
        if lower is not None:
            lo = int(lower.value.to_integral_value(ROUND_CEILING))
            lo += 1 if not lower.inclusive and lo == lower.value else 0
        if upper is not None:
            hi = int(upper.value.to_integral_value(ROUND_FLOOR))
            hi -= 1 if not upper.inclusive and hi == upper.value else 0
        if lo is not None and hi is not None and lo > hi:
            raise UnsupportedSchema("minimum", "no integer lies within the bounds")
        alts = []
        if hi is None or hi >= 0:
            alts += [e for _, e in self._whole(max(lo or 0, 0), hi, _INT_DIGITS)]
        if lo is None or lo < 0:
            start = 1 if hi is None or hi >= 0 else -hi
            negative = [e for _, e in self._whole(start, None if lo is None else -lo, _INT_DIGITS)]
            if negative:
                alts.append(f'"-" {paren(" | ".join(negative))}')
        if not alts:
            raise UnsupportedSchema("minimum", f"no integer of at most {_INT_DIGITS} digits fits")
        return " | ".join(alts)

    def _decimal_range(
        self, lower: _Bound | None, upper: _Bound | None, fraction_digits: int | None
    ) -> str:
        alts = []
        if upper is None or upper.value > 0 or (upper.value == 0 and upper.inclusive):
            if lower is None or lower.value < 0:
                start = _Bound(Decimal(0), True)
            else:
                start = lower
            alts += self._magnitude(start, upper, fraction_digits)
        if lower is None or lower.value < 0:
            # x < 0: write "-" and a magnitude m = -x > 0 with the bounds mirrored.
            if upper is not None and upper.value < 0:
                m_lower = _Bound(-upper.value, upper.inclusive)
            else:
                m_lower = _Bound(Decimal(0), False)
            m_upper = None if lower is None else _Bound(-lower.value, lower.inclusive)
            negative = self._magnitude(m_lower, m_upper, fraction_digits)
            if negative:
                alts.append(f'"-" {paren(" | ".join(negative))}')
        if not alts:
            raise UnsupportedSchema("minimum", "no number lies within the bounds")
        return " | ".join(alts)

    def _magnitude(
        self, lower: _Bound, upper: _Bound | None, fraction_digits: int | None
    ) -> list[str]:
        """Non-negative decimals (no exponent) between the bounds, as alternatives.

        The integer part is the lower bound's, the upper bound's or one in
        between; only the two bounds' own integer parts restrict the fraction.
        """
        if upper is not None and (
            lower.value > upper.value
            or (lower.value == upper.value and not (lower.inclusive and upper.inclusive))
        ):
            return []
        low_int, low_frac = _split_decimal(lower.value)
        if len(str(low_int)) > _SIG_DIGITS:
            return []
        low_edge: _Edge = (low_frac, not lower.inclusive)
        high_int: int | None = None
        high_edge = _FREE
        if upper is not None:
            high_int, high_frac = _split_decimal(upper.value)
            high_edge = (high_frac, not upper.inclusive)

        def at(int_part: int, low: _Edge, high: _Edge) -> str | None:
            """A bound's own integer part, then the fractions that keep within the bounds."""
            text = str(int_part)
            return self._with_fraction(lit(text), len(text), low, high, fraction_digits)

        if high_int == low_int:
            alts = [at(low_int, low_edge, high_edge)]
        else:
            alts = [at(low_int, low_edge, _FREE)]
            middle_hi = None if high_int is None else high_int - 1
            alts += [
                self._with_fraction(expr, length, _FREE, _FREE, fraction_digits)
                for length, expr in self._whole(low_int + 1, middle_hi, _SIG_DIGITS)
            ]
            if high_int is not None and len(str(high_int)) <= _SIG_DIGITS:
                alts.append(at(high_int, _FREE, high_edge))
        return [a for a in alts if a]

    def _with_fraction(
        self, int_expr: str, int_len: int, low: _Edge, high: _Edge, fraction_digits: int | None
    ) -> str | None:
        """``int_expr`` (``int_len`` digits) and the fractions allowed after it, or None if none."""
        room = max(0, _SIG_DIGITS - int_len)
        if fraction_digits is not None:
            room = min(room, fraction_digits)
        ends, more = self._fraction(low[0], low[1], high[0], high[1], room)
        if more and ends:
            return f'{int_expr} ( "." {more} )?'
        if more:
            return f'{int_expr} "." {more}'
        return int_expr if ends else None

    def _fraction(
        self, low: str | None, low_strict: bool, high: str | None, high_strict: bool, room: int
    ) -> tuple[bool, str | None]:
        """Fraction digits (at most ``room``) keeping 0.digits within 0.low and 0.high.

        Returns whether the fraction may end here, and a rule for one or more
        further digits (None if none may follow). ``low``/``high`` None means
        that side is already decided; digits past their end count as zeros.
        """
        ends = _zero_fraction_ok(low, low_strict, high, high_strict)
        if room == 0:
            return ends, None
        key = (low, low_strict, high, high_strict, room)
        if key in self._fractions:
            return ends, self._fractions[key]
        if low is None and high is None:
            self._fractions[key] = f"[0-9]{{1,{room}}}"
            return ends, self._fractions[key]
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for digit in range(10):
            next_low: str | None = None
            if low is not None:
                bound = int(low[0]) if low else 0
                if digit < bound:
                    continue
                next_low = low[1:] if digit == bound else None
            next_high: str | None = None
            if high is not None:
                bound = int(high[0]) if high else 0
                if digit > bound:
                    continue
                next_high = high[1:] if digit == bound else None
            groups.setdefault((next_low, next_high), []).append(digit)
        alts = []
        for (next_low, next_high), digits in groups.items():
            cls = char_class(normalize([(0x30 + d, 0x30 + d) for d in digits]))
            stop, more = self._fraction(next_low, low_strict, next_high, high_strict, room - 1)
            if more and stop:
                alts.append(f"{cls} {more}?" if is_atom(more) else f"{cls} ( {more} )?")
            elif more:
                alts.append(f"{cls} {more}")
            elif stop:
                alts.append(cls)
        rule = self.grammar.helper("fraction", " | ".join(alts)) if alts else None
        self._fractions[key] = rule
        return ends, rule

    def _whole(self, lo: int, hi: int | None, max_digits: int) -> list[tuple[int, str]]:
        """Canonical decimal integers in [lo, hi], grouped by length: (length, expression)."""
        cap = 10**max_digits - 1
        hi = cap if hi is None else min(hi, cap)
        out = []
        for length in range(len(str(lo)), len(str(hi)) + 1):
            first = max(lo, 10 ** (length - 1) if length > 1 else 0)
            last = min(hi, 10**length - 1)
            if first <= last:
                out.append((length, self._digits(str(first), str(last))))
        return out

    def _digits(self, x: str, y: str) -> str:
        """Digit strings of one length between x and y inclusive; no top-level '|'."""
        if x == y:
            return lit(x)
        if len(x) == 1:
            return f"[{x}-{y}]"
        if x[0] == y[0]:
            return seq(lit(x[0]), self._digits(x[1:], y[1:]))
        rest = len(x) - 1
        alts = []
        first, last = int(x[0]), int(y[0])
        if x[1:] != "0" * rest:
            alts.append(seq(lit(x[0]), self._digits(x[1:], "9" * rest)))
            first += 1
        tail = ""
        if y[1:] != "9" * rest:
            tail = seq(lit(y[0]), self._digits("0" * rest, y[1:]))
            last -= 1
        if first <= last:
            lead = lit(str(first)) if first == last else f"[{first}-{last}]"
            alts.append(seq(lead, "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
        if tail:
            alts.append(tail)
        return alts[0] if len(alts) == 1 else self.grammar.helper("digits", " | ".join(alts))
