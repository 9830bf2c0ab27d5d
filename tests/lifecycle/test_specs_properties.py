"""Property: whatever a user passes, a spec either constructs or raises SpecError."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commandlab_async import DockerPlatform, DockerSpec, KubernetesPlatform, KubernetesSpec
from commandlab_async.errors import SpecError
from commandlab_async.platforms import REGISTRY

pytestmark = pytest.mark.unit

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=8),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(
        st.text(max_size=10), st.one_of(st.text(max_size=70), st.integers()), max_size=3
    ),
    st.sampled_from([*DockerPlatform, *KubernetesPlatform]),
)
DOCKER_FIELDS = [f.name for f in fields(DockerSpec)]
KUBERNETES_FIELDS = [f.name for f in fields(KubernetesSpec)]
# A platform's default options may be incomplete (ECS needs a network): SpecError names
# the options field then.
OPTIONS_FIELDS = [f.name for entry in REGISTRY.values() for f in fields(entry.options)]


def _check(cls: type[Any], kwargs: dict[str, Any]) -> None:
    try:
        spec = cls(**kwargs)
    except SpecError as error:
        field = error.field
    else:
        # A spec that constructs is internally consistent.
        assert 1 <= spec.daemon_port <= 65535
        assert spec.memory >= 16
        assert spec.cpu > 0
        return
    assert field in DOCKER_FIELDS + KUBERNETES_FIELDS + OPTIONS_FIELDS, field


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(DOCKER_FIELDS), anything, max_size=5))
def test_docker_spec_raises_only_spec_error(kwargs: dict[str, Any]) -> None:
    _check(DockerSpec, kwargs)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(KUBERNETES_FIELDS), anything, max_size=5))
def test_kubernetes_spec_raises_only_spec_error(kwargs: dict[str, Any]) -> None:
    _check(KubernetesSpec, kwargs)
