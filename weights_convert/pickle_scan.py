"""Check a pickle before it is unpickled: only the opcodes a state dict needs, bounded nesting, allowed globals.

`scan_pickle` walks the opcodes with `pickletools.genops`, which parses arguments but builds nothing, and simulates
the stack with one depth counter per entry (shared with the memo, so that containers grown through the memo are
counted too). Why the depth matters: CPython hashes nested tuples recursively in C, so a 3 MB pickle of nested tuples
used as a dict key overflows the C stack, a segfault rather than an exception. Tuples are immutable, so their
simulated depth is exact; lists and dicts can grow later and are re-bounded when materialised (`reader`).
The memo is kept dense: an index may overwrite an entry or add the next one (0, 1, 2, ..., as pickle.py's
`memoize` and _pickle.c's `memo_put` number them), never skip ahead. CPython's C unpickler grows its memo array to
twice the largest index it is given, before the value is stored, so a LONG_BINPUT index of 57 million (one flipped
length byte turns the next four bytes into one) would make it allocate ~900 MB for a 3 kB file. Argument lengths
(BINUNICODE, BINBYTES, ...) are bounded by the bytes that remain: `genops` reads each argument and fails when fewer
bytes remain than it declares, before the C unpickler, which allocates a BINBYTES buffer of the declared size first,
ever sees the pickle.
Globals named by GLOBAL (and STACK_GLOBAL with literal strings) are checked here already, so that the refusal names the
global even when a later opcode (NEWOBJ) would be refused too.
"""
from __future__ import annotations

import io
import pickletools

from .errors import CheckpointError, UnsafeCheckpointError

MAX_DEPTH = 64            # container nesting: a state dict needs ~5, a training checkpoint ~10


def scan_pickle(data: bytes, start: int, allowed_global) -> int:
    """Check the pickle at `data[start:]` without building it; return the offset just past its STOP opcode.

    `allowed_global(module, name)` raises `UnsafeCheckpointError` for a global that may not be loaded.
    """
    f = io.BytesIO(data)
    f.seek(start)
    stack, marks, memo = [], [], {}      # stack entries are one-element lists [depth], shared with the memo

    def fence():
        return marks[-1] if marks else 0

    def pop():
        if len(stack) <= fence():
            raise CheckpointError("corrupt pickle: stack underflow")
        return stack.pop()

    def top():
        if len(stack) <= fence():
            raise CheckpointError("corrupt pickle: stack underflow")
        return stack[-1]

    def pop_mark():
        if not marks:
            raise CheckpointError("corrupt pickle: missing MARK")
        items = stack[marks.pop():]
        del stack[len(stack) - len(items):]
        return items

    def check(depth):
        if depth > MAX_DEPTH:
            raise CheckpointError(f"corrupt checkpoint: containers nested more than {MAX_DEPTH} deep")
        return depth

    def push(depth, value=None):
        stack.append([check(depth), value])

    def grow(box, items):
        box[0] = max(box[0], check(1 + max((b[0] for b in items), default=0)))

    try:
        for op, arg, _pos in pickletools.genops(f):
            name = op.name
            if name in _STRING_OPS:
                push(0, arg)
            elif name == "GLOBAL":
                allowed_global(*arg.split(" ", 1))
                push(0)
            elif name in _LEAF_OPS:
                push(0)
            elif name in _EMPTY_OPS:
                push(1)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                items = [pop() for _ in range(int(name[-1]))]
                push(1 + max(b[0] for b in items))
            elif name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
                push(1 + max((b[0] for b in pop_mark()), default=0))
            elif name == "APPEND":
                item = pop()
                grow(top(), [item])
            elif name == "SETITEM":
                value, key = pop(), pop()
                grow(top(), [key, value])
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = pop_mark()
                grow(top(), items)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "POP":
                if len(stack) > fence():
                    stack.pop()
                else:
                    pop_mark()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(top())
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > len(memo):
                    raise CheckpointError(f"corrupt pickle: memo index {arg} out of sequence (next is {len(memo)})")
                memo[arg] = top()
            elif name == "MEMOIZE":
                memo[len(memo)] = top()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise CheckpointError("corrupt pickle: reference to an unknown memo entry")
                stack.append(memo[arg])
            elif name == "STACK_GLOBAL":
                qualname, module = pop()[1], pop()[1]
                if isinstance(module, str) and isinstance(qualname, str):
                    allowed_global(module, qualname)
                push(0)
            elif name == "BINPERSID":
                pop()
                push(0)
            elif name == "REDUCE":
                args = pop()
                pop()
                push(1 + args[0])
            elif name == "BUILD":
                state = pop()
                grow(top(), [state])
            elif name in ("PROTO", "FRAME"):
                pass
            elif name == "STOP":
                if len(stack) != 1 or marks:
                    raise CheckpointError("corrupt pickle: unbalanced stack at STOP")
                return f.tell()
            elif name in _UNSAFE_OPS:
                raise UnsafeCheckpointError(f"refusing pickle opcode {name}: it instantiates arbitrary objects, "
                                            f"which a state dict never needs")
            else:
                raise CheckpointError(f"unsupported pickle opcode {name} in a checkpoint")
    except CheckpointError:
        raise
    except Exception as e:   # genops: unknown opcode, truncated argument, bad text argument
        raise CheckpointError(f"corrupt pickle: {str(e)[:80]}") from None
    raise CheckpointError("corrupt pickle: no STOP opcode")


_STRING_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_LEAF_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
             "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "NONE", "NEWTRUE", "NEWFALSE", "FLOAT",
             "BINFLOAT", "PERSID"}
_EMPTY_OPS = {"EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET"}
_UNSAFE_OPS = {"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}
