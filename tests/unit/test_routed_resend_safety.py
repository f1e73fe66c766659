"""Which commands RoutedClient may send to a symbol's new owner after its old partition went
silent (docs/partitions.md, "A partition that does not answer"): only those that cannot take
effect twice once the old partition may have applied them."""

from pyengine.client.routed import OutcomeUnknown, resend_safe_elsewhere


def test_place_is_safe_only_with_a_client_order_id() -> None:
    # the client_order_id's idempotency state moves with the symbol: a second place is a duplicate
    assert resend_safe_elsewhere({"op": "place", "symbol": "BTC-USDT", "client_order_id": "a1"})
    assert not resend_safe_elsewhere({"op": "place", "symbol": "BTC-USDT"})
    assert not resend_safe_elsewhere({"op": "place", "symbol": "BTC-USDT", "client_order_id": ""})


def test_funds_and_amends_are_never_sent_elsewhere() -> None:
    for op in ("deposit", "withdraw", "amend"):
        assert not resend_safe_elsewhere({"op": op, "symbol": "BTC-USDT", "tx_id": "t1"}), op


def test_cancels_and_reads_are_safe() -> None:
    for op in ("cancel", "cancel_all", "book", "order", "balances", "open_orders", "fills", "trades"):
        assert resend_safe_elsewhere({"op": op, "symbol": "BTC-USDT"}), op


def test_outcome_unknown_names_both_partitions_and_what_to_do() -> None:
    err = OutcomeUnknown({"op": "deposit", "tx_id": "t1"}, "BTC-USDT", "p3", "p1")
    assert "deposit" in str(err) and "p3" in str(err) and "p1" in str(err) and "check" in str(err)
    assert err.old_partition == "p3" and err.new_partition == "p1"
    gone = OutcomeUnknown({"op": "withdraw"}, "BTC-USDT", "p3", None)
    assert "no longer in the map" in str(gone)
