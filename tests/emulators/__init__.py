"""The emulated clouds themselves, against their SDKs."""
