"""The config reference in Markdown, generated from the section dataclasses and their field
docstrings (read from the source, where Python keeps no runtime trace of them)."""

import ast
import dataclasses
import inspect

from megatron_ttt.config.sections import PretrainConfig


def field_docs(cls) -> dict[str, str]:
    """{field: docstring} from the string literal that follows each annotated field."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    top = PretrainConfig()
    for f in dataclasses.fields(top):
        value = getattr(top, f.name)
        if not dataclasses.is_dataclass(value):
            lines.append(f"| `{f.name}` | `{value}` | {field_docs(PretrainConfig).get(f.name, '')} |")
            continue
        docs = field_docs(type(value))
        for inner in dataclasses.fields(value):
            lines.append(f"| `{f.name}.{inner.name}` | `{getattr(value, inner.name)}` | {docs.get(inner.name, '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")


