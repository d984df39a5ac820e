#!/usr/bin/env python3
"""An `exec:` executor in Python: a stand-in for an AI agent that answers arithmetic
questions, to be run by a Polity node.

    polity node ... --capability 'arith=exec:python3 clients/python/examples/agent.py'
    polity submit --capability arith --payload 'What is (2 + 3) * 7?' --replication 3

The node runs the command with `sh -c`, writes the task's payload to its stdin and
takes its stdout as the answer (node/src/member/executor.rs); a non-zero exit is an
error answer (stderr says why), and a run past the task's deadline is killed with
its process group. Members that run the same deterministic agent give the same
answer, so a quorum decides it; an agent that is sometimes wrong (`--error-rate`,
like an unreliable model) is outvoted when enough members agree.

The question is the payload as UTF-8: the first arithmetic expression in it (numbers,
+ - * / // % **, parentheses) is evaluated exactly (fractions, not floats) and the
answer is printed in lowest terms, e.g. `35` or `7/2`. Nothing is `eval`ed: the
expression is parsed with `ast` and only those operators are allowed.
"""

import argparse
import ast
import operator
import random
import re
import sys
from fractions import Fraction

#: A payload is read up to this size (an agent bounds its input too).
PAYLOAD_BYTES_MAX = 64 << 10
#: Exponents beyond this are refused (2 ** 10**9 would not finish).
EXPONENT_MAX = 512
#: No number (numerator or denominator, intermediate results too) grows beyond this
#: many bits: `((9 ** 512) ** 512) ** 512` is refused before it is computed, not
#: left to eat the member's memory.
BITS_MAX = 1 << 16
EXPRESSION = re.compile(r"[-+(]*\s*[0-9.][0-9.+\-*/%()\s]*")

OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


class Refused(Exception):
    """The question has no answer this agent will give."""


def bits(value: Fraction) -> int:
    return max(value.numerator.bit_length(), value.denominator.bit_length())


def bounded(value: Fraction) -> Fraction:
    if bits(value) > BITS_MAX:
        raise Refused(f"a number in the computation exceeds {BITS_MAX} bits")
    return value


def evaluate(node: ast.AST) -> Fraction:
    return bounded(evaluate_unbounded(node))


def evaluate_unbounded(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = evaluate(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = evaluate(node.left), evaluate(node.right)
        if exponent.denominator != 1 or abs(exponent) > EXPONENT_MAX:
            raise Refused(f"exponent {exponent} is not an integer of at most {EXPONENT_MAX}")
        if base == 0 and exponent < 0:
            raise Refused("division by zero")
        if bits(base) * abs(int(exponent)) > BITS_MAX:
            raise Refused(f"the power exceeds {BITS_MAX} bits")
        return base ** int(exponent)
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise Refused("division by zero")
        return Fraction(OPERATORS[type(node.op)](left, right))
    raise Refused(f"not arithmetic: {ast.dump(node)[:80]}")


def answer(question: str) -> str:
    match = EXPRESSION.search(question)
    if match is None:
        raise Refused("no arithmetic expression in the question")
    text = match.group(0).strip().rstrip("?.")
    try:
        tree = ast.parse(text, mode="eval")
        value = evaluate(tree)
    except SyntaxError as error:
        raise Refused(f"cannot parse {text[:80]!r}: {error.msg}") from None
    except (RecursionError, MemoryError, ValueError) as error:
        # Nesting too deep, a literal with too many digits: not a question to answer.
        raise Refused(f"too large to answer: {type(error).__name__}") from None
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--error-rate", type=float, default=0.0, help="answer wrong with this probability")
    args = parser.parse_args()
    payload = sys.stdin.buffer.read(PAYLOAD_BYTES_MAX + 1)
    if len(payload) > PAYLOAD_BYTES_MAX:
        print(f"question longer than {PAYLOAD_BYTES_MAX} bytes", file=sys.stderr)
        return 1
    try:
        result = answer(payload.decode("utf-8"))
    except (Refused, UnicodeDecodeError) as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    if random.random() < args.error_rate:
        result = str(random.randint(-1000, 1000))  # an unreliable agent's bad day
    sys.stdout.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
