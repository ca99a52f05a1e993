"""chargecast: forecast a patient's medical charges at admission, with an interval and an explanation."""

__version__ = "0.1.0"
