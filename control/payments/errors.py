"""The errors payment flows raise; the API turns each into a clear answer (control.api)."""

from __future__ import annotations


class PaymentError(Exception):
    """Base of the errors the API turns into clear answers."""


class PaymentInvalid(PaymentError):
    """The request itself is wrong (amount, phone, network)."""


class PaymentNotFound(PaymentError):
    """No such kit or payment in the caller's scope."""


class PaymentRejected(PaymentError):
    """The provider answered and refused to start the payment."""


class PaymentProviderUnavailable(PaymentError):
    """The provider could not be reached: nothing was credited; try again later."""
