"""Federation fixtures shared by the modules that run Flower against a real registry."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def admin_link(request):
    """A simulation SuperLink whose ServerApp process holds the registry keys the module names (ADMIN, READER)."""
    from federation.runner import SuperLink

    with pytest.MonkeyPatch.context() as env:
        env.setenv("FEDGE_ADMIN_KEY", request.module.ADMIN)
        env.setenv("FEDGE_API_KEY", request.module.READER)
        with SuperLink(simulation=True) as running:
            yield running
