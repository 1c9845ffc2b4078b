"""ISO 4217 currencies with their minor-unit exponents; amounts are always integer minor units."""

from __future__ import annotations

# Active ISO 4217 codes that have a minor unit, grouped by exponent. Codes without one
# (XAU, XDR, XXX, ...) are not currencies a card can be charged in.
_BY_EXPONENT: dict[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
    2: (
        "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
        "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
        "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR "
        "KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV "
        "MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR "
        "SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH "
        "USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
    ),
}
EXPONENT: dict[str, int] = {
    code: exponent for exponent, codes in _BY_EXPONENT.items() for code in codes.split()
}

# Rough units of each currency per US dollar: only to scale simulated amounts and limits
# so that a JPY payment is not a thousandth of a USD one. Not market data.
UNITS_PER_USD: dict[str, float] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CHF": 0.88, "CAD": 1.36,
    "AUD": 1.52, "SEK": 10.5, "NOK": 10.7, "DKK": 6.9, "PLN": 4.0, "CZK": 23.0, "HUF": 360.0,
    "BRL": 5.0, "MXN": 17.0, "INR": 83.0, "CNY": 7.2, "KRW": 1340.0, "SGD": 1.35,
    "HKD": 7.8, "AED": 3.67, "SAR": 3.75, "BHD": 0.376, "KWD": 0.307, "OMR": 0.385,
    "JOD": 0.709, "TND": 3.1, "ZAR": 18.5, "TRY": 32.0, "ISK": 138.0, "CLP": 940.0,
}


def is_currency(code: str) -> bool:
    return code in EXPONENT


def exponent(code: str) -> int:
    return EXPONENT[code]


def minor_units(usd: float, currency: str) -> int:
    """Convert a US-dollar figure into the currency's minor units, roughly (simulation only)."""
    return round(usd * UNITS_PER_USD.get(currency, 1.0) * 10 ** EXPONENT[currency])


def format_amount(amount: int, currency: str) -> str:
    """12345 USD -> '123.45 USD'; 500 JPY -> '500 JPY'; 1234 BHD -> '1.234 BHD'."""
    places = EXPONENT.get(currency, 2)
    if places == 0:
        return f"{amount:,} {currency}"
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**places)
    return f"{sign}{whole:,}.{fraction:0{places}d} {currency}"
