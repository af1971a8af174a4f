"""Admin sessions of one control process on a broker that takes the username as client id
(cizo up's): concurrent users of the dynamic-security plugin (the start-up reconcile and a
kit's provisioning) do not take each other's session over."""

from __future__ import annotations

import threading
from pathlib import Path

from cizo import services
from control.gateways.broker_admin import BrokerAdminConfig, BrokerAdminError, session

ADMIN_PW = "admin-sessions-password-0123456789"


def test_concurrent_admin_sessions_in_one_process_all_get_their_answers(
        tmp_path: Path) -> None:
    port = services.free_port()
    broker = services.mosquitto_with_doors(tmp_path / "mosquitto", port,
                                           admin_user="cizo-admin", admin_password=ADMIN_PW)
    broker.start()
    config = BrokerAdminConfig("127.0.0.1", port, "cizo-admin", ADMIN_PW, None, 10.0)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                with session(config) as dynsec:
                    # several round trips in one session, like a reconcile
                    dynsec.run([{"command": "createRole", "rolename": f"r-{n}-{i}"}])
                    answers = dynsec.run([{"command": "getRole", "rolename": f"r-{n}-{i}"}])
                    assert "error" not in answers[0], answers
        except (BrokerAdminError, AssertionError) as exc:
            failures.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        broker.stop()
    assert failures == []
