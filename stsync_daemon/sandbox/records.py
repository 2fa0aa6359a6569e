"""Deterministic ServiceTitan-shaped records, generated on demand from (seed, tenant, id, version).

Nothing is stored per record: a 64-bit hash of the record's identity picks every field from small pools,
so a data set of millions costs no memory and the same seed always yields the same bytes.
Shapes follow `Crm.V2.ExportCustomerResponse` and `Accounting.V2.ExportInvoiceResponse`, including the
real-data deviations the sync must survive: about 1.5% each of customer `type`, `address.country` and
`externalData` are `null` although the spec requires them.
"""

from __future__ import annotations

from typing import Any

import orjson

from .clock import format_ticks

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_CONTENT = 0xD1342543DE82EF95


def mix(value: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (value + _GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


_FIRST = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Sandra",
    "Mark",
    "Margaret",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Andrew",
    "Emily",
    "Paul",
    "Donna",
    "Joshua",
    "Michelle",
]
_LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
]
_COMPANY = (
    "Plumbing",
    "Heating & Air",
    "Property Management",
    "Dental Group",
    "Holdings LLC",
    "Restaurant Group",
    "Realty",
    "Construction Inc",
    "Medical Center",
    "Self Storage",
)
_STREETS = (
    "Oak",
    "Maple",
    "Cedar",
    "Pine",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Sunset",
    "Park",
    "Main",
    "Church",
    "Highland",
    "Willow",
    "Meadow",
    "River",
    "Forest",
    "Spring",
    "Ridge",
    "Valley",
)
_STREET_TYPES = ("St", "Ave", "Blvd", "Dr", "Ln", "Rd", "Ct", "Way")
# city, state, zip prefix, latitude, longitude
_CITIES = (
    ("Dallas", "TX", "752", 32.7767, -96.797),
    ("Austin", "TX", "787", 30.2672, -97.7431),
    ("Phoenix", "AZ", "850", 33.4484, -112.074),
    ("Denver", "CO", "802", 39.7392, -104.9903),
    ("Atlanta", "GA", "303", 33.749, -84.388),
    ("Orlando", "FL", "328", 28.5383, -81.3792),
    ("Charlotte", "NC", "282", 35.2271, -80.8431),
    ("Nashville", "TN", "372", 36.1627, -86.7816),
    ("Sacramento", "CA", "958", 38.5816, -121.4944),
    ("Glendale", "CA", "912", 34.1425, -118.255),
    ("Columbus", "OH", "432", 39.9612, -82.9988),
    ("Las Vegas", "NV", "891", 36.1699, -115.1398),
    ("Portland", "OR", "972", 45.5152, -122.6784),
    ("Tampa", "FL", "336", 27.9506, -82.4572),
    ("Raleigh", "NC", "276", 35.7796, -78.6382),
    ("Boise", "ID", "837", 43.615, -116.2023),
)
_LEAD_SOURCES = ("Google", "Yelp", "Referral", "Facebook", "Mailer", "Repeat", "Angi", "Radio")
_SYSTEMS = ("Gas furnace", "Heat pump", "Boiler", "Mini split", "Tankless water heater", "Septic")
_PREFERRED = ("Morning", "Afternoon", "Any time", "Call first")
_NOTES = (
    "Gate code on file",
    "Dog in yard",
    "Prefers text messages",
    "Park on street",
    "Annual maintenance plan",
    "Ask for the owner",
    "Second floor unit",
    "Key under mat",
)
_TAGS = (1101, 1102, 1103, 1104, 1105, 1106, 1107, 1108, 1109, 1110, 1111, 1112)
_UNITS = ("Apt 1", "Apt 2B", "Suite 100", "Unit 12", "#4", "Apt 305")
_BUSINESS_UNITS = (
    (201, "HVAC - Service"),
    (202, "HVAC - Install"),
    (203, "Plumbing - Service"),
    (204, "Electrical - Service"),
    (205, "Drains"),
)
_JOB_TYPES = ("Service Call", "Maintenance", "Install", "Repair", "Estimate", "Warranty")
_SKUS = (
    (5001, "Diagnostic Fee", "Service", "89.00"),
    (5002, "Capacitor 45/5 MFD", "Material", "145.00"),
    (5003, "Maintenance Visit", "Service", "129.00"),
    (5004, "Drain Cleaning", "Service", "225.00"),
    (5005, "Water Heater 50 gal", "Equipment", "1850.00"),
    (5006, "Thermostat", "Material", "310.00"),
    (5007, "Labor Hour", "Service", "120.00"),
    (5008, "Member Discount", "PriceModifier", "-25.00"),
)
_REVIEW = ("NeedsReview", "Reviewed", "Invoiced", "ReadyForBilling", "OnHold")
_SENT = ("NotSent", "Sent", "Opened")
_CONFIG = ("JobInvoice", "JobInvoice", "JobInvoice", "ProjectInvoice", "MembershipInvoice")
_TERMS = ("Due Upon Receipt", "Net 15", "Net 30")
_EMPLOYEES = ((301, "Alex Rivera"), (302, "Sam Chen"), (303, "Jordan Patel"), (304, "Casey Brooks"))

CUSTOMER_ID_BASE = 10_000_000
INVOICE_ID_BASE = 50_000_000


def customer_name(salt: int, record_id: int) -> str:
    """The name of a customer; invoices use it too so that both data sets agree."""
    return _NAMES_BY_SLOT[mix(salt ^ (record_id - CUSTOMER_ID_BASE - 1)) * _CONTENT & 2047]


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _j(value: Any) -> str:
    return orjson.dumps(value).decode()


def _field_pool(type_id: int, name: str, values: tuple[str | None, ...]) -> tuple[str, ...]:
    return tuple(_j({"typeId": type_id, "name": name, "value": v}) for v in values)


def _rare(slot: int, kind: int, per_mille: int) -> bool:
    """Whether a pool slot gets a rare variant (about `per_mille` in 1000 slots, spread by a hash)."""
    return mix(slot * 8 + kind) % 1000 < per_mille


# Customers are rendered straight to JSON text from pre-encoded slots: a record's content hash picks a
# few large blocks (name and type; address and the first custom fields; a status block that changes
# with every version; payment terms) instead of formatting thirty fields one by one. Every string in
# the pools is plain ASCII without escapes. About 1.5% of the name slots have the null `type`, of the
# address slots the null `country`, and of the records the null `externalData` that real data has.
_CF_SOURCE = _field_pool(2001, "Lead Source", _LEAD_SOURCES)
_CF_SYSTEM = _field_pool(2002, "Equipment", _SYSTEMS)
_CF_TIME = _field_pool(2003, "Preferred Time", _PREFERRED)
_CF_NOTES = _field_pool(2004, "Access Notes", _NOTES)
_CF_REFERRAL = _field_pool(2006, "Referral Code", (None, None, "FRIEND25", "SPRING10"))
_CF_ZONE = _field_pool(2007, "Service Zone", tuple(f"Zone {k}" for k in range(1, 17)))
_CF_SCORE = _field_pool(
    2008, "Last Survey Score", (*(str(k) for k in range(11)), "", "", "", "", "")
)
_STREET_NAMES = tuple(f"{s} {t}" for s in _STREETS for t in _STREET_TYPES)
_NAMES = tuple(f"{f} {last}" for last in _LAST for f in _FIRST)
_COMPANY_NAMES = tuple(f"{last} {c}" for last in _LAST for c in _COMPANY)
_UNITS_J = tuple(_j(u) for u in _UNITS)
_TAG_SETS_J = tuple(
    _j([_TAGS[(k * 7 + j * 5) % len(_TAGS)] for j in range(k % 4)]) for k in range(64)
)
_BOOL = ("false", "true")

# 2,048 name slots, one in five a company: `"name":…,"type":…,`.
_IS_COMPANY = tuple(int(k % 5 == 0) for k in range(2048))
_NAMES_BY_SLOT = tuple(
    _COMPANY_NAMES[(k // 5 * 7) % 400] if company else _NAMES[(k * 13) % 1600]
    for k, company in enumerate(_IS_COMPANY)
)
_NAME_SLOTS = tuple(
    f'"name":{_j(name)},"type":'
    + ("null" if _rare(k, 1, 15) else '"Commercial"' if company else '"Residential"')
    + ","
    for k, (name, company) in enumerate(zip(_NAMES_BY_SLOT, _IS_COMPANY, strict=True))
)


def _address_slot(k: int) -> str:
    city, state, prefix, lat, lon = _CITIES[(k * 7) % 16]
    jitter = (k * 13) % 64
    unit = _UNITS_J[k % 6] if k % 8 == 0 else "null"
    country = "null" if _rare(k, 2, 15) else '"USA"'
    return (
        f'"address":{{"street":"{100 + (k * 7919) % 9800} {_STREET_NAMES[(k * 31) % 160]}",'
        f'"unit":{unit},"city":{_j(city)},"state":{_j(state)},"zip":"{prefix}{(k * 37) % 100:02d}",'
        f'"country":{country},"latitude":{round(lat + (jitter * 53 % 64 - 32) / 900, 6)!r},'
        f'"longitude":{round(lon + (jitter * 29 % 64 - 32) / 900, 6)!r}}},'
        f'"customFields":[{_CF_SOURCE[k & 7]},{_CF_SYSTEM[(k >> 3) % 6]},{_CF_TIME[(k >> 6) & 3]},'
    )


# 4,096 address slots, each with the first three custom fields: `"address":{…},"customFields":[…,`.
_ADDRESS_SLOTS = tuple(_address_slot(k) for k in range(4096))
_NOTES_SLOTS = tuple(f"{note}," for note in _CF_NOTES)
_TAIL_SLOTS = tuple(f"{_CF_REFERRAL[k & 3]},{_CF_ZONE[(k >> 2) & 15]}," for k in range(64))


def _status_slot(k: int, company: int) -> str:
    m = mix(k * 2 + company + 0x5747)
    balance = repr(((m >> 20) % 250_000) / 100) if m % 3 == 0 else "0.0"
    return (
        f'{_CF_SCORE[k & 15]}],"balance":{balance},'
        f'"taxExempt":{_BOOL[company and (m >> 8) % 7 == 0]},"tagTypeIds":{_TAG_SETS_J[(m >> 12) & 63]},'
        f'"doNotMail":{_BOOL[(m >> 40) % 9 == 0]},"doNotService":{_BOOL[(m >> 50) % 50 == 0]},'
        f'"nationalAccount":{_BOOL[company and (m >> 56) % 11 == 0]},"createdOn":"'
    )


# The fields a modification changes, per version hash and per kind (person, company): from the last
# custom field to the opening quote of `createdOn`.
_STATUS_SLOTS = tuple(tuple(_status_slot(k, company) for k in range(4096)) for company in (0, 1))
_CREATED_BY_SLOTS = tuple(f'","createdById":{100 + k},"modifiedOn":"' for k in range(40))
_MERGED_SLOTS = tuple(str(CUSTOMER_ID_BASE + 1 + k) for k in range(1000))
_MONEY_SLOTS = (
    ('"paymentTermId":null,"creditLimit":null,"creditLimitBalance":null,"externalData":',) * 256,
    tuple(
        f'"paymentTermId":{401 + k % 3},"creditLimit":{float((k // 3 % 50 + 1) * 1000)!r},'
        f'"creditLimitBalance":{float((k // 3 % 50 + 1) * 1000)!r},"externalData":'
        for k in range(256)
    ),
)
_SEGMENT_ENDS = ('{"key":"segment","value":"B2C"}]}', '{"key":"segment","value":"B2B"}]}')


def customer_json(
    h: int,
    record_id: int,
    version: int,
    modified_ticks: int,
    created_ticks: int,
    active: bool,
) -> str:
    """One customer as the export and list endpoints serve it, as JSON text (about 1 KB).

    `h` is the record's identity hash (its data set's `mix(salt ^ index)`), which also fixes its base
    modifiedOn; the content hash is derived from it, and each version gets a status block of its own.
    """
    c = h * _CONTENT & MASK64  # a bijection of h: as spread, a fraction of mix's cost
    v = mix(c ^ (version * _GOLDEN & MASK64)) if version else h
    slot = c & 2047
    company = _IS_COMPANY[slot]
    rid = str(record_id)
    external = (
        "null}"
        if (c >> 53) & 1023 < 15
        else f'[{{"key":"crmId","value":"CRM-{rid.zfill(9)}"}},{_SEGMENT_ENDS[company]}'
    )
    return (
        f'{{"id":{rid},"active":{_BOOL[active]},{_NAME_SLOTS[slot]}'
        f"{_ADDRESS_SLOTS[(c >> 11) & 4095]}{_NOTES_SLOTS[(v >> 4) & 7]}"
        f'{{"typeId":2005,"name":"Legacy Account","value":"LA-{rid[-6:]}"}},'
        f"{_TAIL_SLOTS[(c >> 23) & 63]}{_STATUS_SLOTS[company][(v >> 8) & 4095]}"
        f"{format_ticks(created_ticks)}{_CREATED_BY_SLOTS[(c >> 29) % 40]}"
        f'{format_ticks(modified_ticks)}","mergedToId":'
        f"{'null' if active else _MERGED_SLOTS[(c >> 35) % 1000]},"
        f"{_MONEY_SLOTS[company][(c >> 45) & 255]}{external}"
    )


_DAY_TICKS = 86_400 * 10_000_000
# Invoice fragments, pre-encoded: line items per (SKU, quantity) without their ids and dates,
# addresses, business units and employees.
_ITEMS_J: tuple[tuple[str, int], ...] = tuple(
    (
        _j(
            {
                "description": f"<p>{name}</p>",
                "quantity": f"{qty}.00",
                "cost": _money(abs(int(price.replace(".", ""))) // 3),
                "totalCost": _money(abs(int(price.replace(".", ""))) // 3 * qty),
                "price": price,
                "type": kind,
                "skuName": name,
                "skuId": sku,
                "total": _money(int(price.replace(".", "")) * qty),
                "inventory": kind in ("Material", "Equipment"),
                "taxable": kind != "Service",
                "isChargeable": True,
                "membershipTypeId": 0,
                "displayName": name,
                "soldHours": 1.5 if kind == "Service" else None,
            }
        )[1:-1],
        int(price.replace(".", "")) * qty,
    )
    for sku, name, kind, price in _SKUS
    for qty in ((1, 1, 1) if kind == "PriceModifier" else (1, 2, 3))
)
_INVOICE_ADDRESSES_J = tuple(
    _j(
        {
            "street": f"{100 + (k * 7919) % 9800} {_STREETS[k % len(_STREETS)]} St",
            "unit": None,
            "city": _CITIES[(k * 7) % len(_CITIES)][0],
            "state": _CITIES[(k * 7) % len(_CITIES)][1],
            "zip": f"{_CITIES[(k * 7) % len(_CITIES)][2]}{(k * 37) % 100:02d}",
            "country": "USA",
        }
    )
    for k in range(1024)
)
_UNIT_EMPLOYEE_J = tuple(
    (
        f'"businessUnit":{_j({"id": bu_id, "name": bu_name})},"termName":{_j(term)},'
        f'"createdBy":{_j(emp_name)}',
        f'{{"id":{emp_id},"name":{_j(emp_name)},"modifiedOn":',
    )
    for bu_id, bu_name in _BUSINESS_UNITS
    for term in _TERMS
    for emp_id, emp_name in _EMPLOYEES
)
_INVOICE_TAIL = (
    '"paidOn":null,"importId":null,"exportId":null,"materialSkuId":null,"membershipId":null,'
    '"budgetCodeId":null,"taxZoneId":null}'
)


def invoice_json(
    salt: int,
    record_id: int,
    version: int,
    modified_ticks: int,
    created_ticks: int,
    active: bool,
    customer_salt: int,
    customers: int,
) -> str:
    """One invoice as the export and list endpoints serve it, as JSON text; money fields are strings."""
    h = mix(salt ^ record_id)
    h2 = mix(h)
    hv = mix(h2 ^ (version * _GOLDEN & MASK64)) if version else h2
    created = format_ticks(created_ticks)
    day_ticks = created_ticks - created_ticks % _DAY_TICKS
    day = format_ticks(day_ticks)
    items = []
    subtotal = 0
    for k in range(1 + h % 3):
        mid, total_cents = _ITEMS_J[(h >> (8 + 5 * k)) % 24]
        subtotal += total_cents
        items.append(
            f'{{"id":{record_id * 10 + k},{mid},"createdOn":"{created}","modifiedOn":"{created}",'
            f'"serviceDate":"{day}","order":{k + 1},"addOn":false}}'
        )
    tax = subtotal * 825 // 10_000 if subtotal > 0 else 0
    total = subtotal + tax
    paid = total if (hv >> 10) % 3 else total // 2 * ((hv >> 14) % 2)
    job_type = _JOB_TYPES[(h2 >> 28) % len(_JOB_TYPES)]
    unit_employee, employee_head = _UNIT_EMPLOYEE_J[(h2 >> 8) % 60]
    address = _INVOICE_ADDRESSES_J[(h2 >> 40) & 1023]
    if customers:
        customer_id = CUSTOMER_ID_BASE + 1 + (h2 >> 16) % customers
        customer = f'{{"id":{customer_id},"name":{_j(customer_name(customer_salt, customer_id))}}}'
        location = f'{{"id":{customer_id + 70_000_000},"name":"Home"}}'
    else:
        customer = location = "null"
    batch = (
        "null"
        if (hv >> 22) % 3
        else f'{{"id":{7000 + (hv >> 24) % 50},"number":"B-1","name":"Daily"}}'
    )
    number = record_id - INVOICE_ID_BASE
    return (
        f'{{"id":{record_id},"syncStatus":"{"Pending" if (hv >> 20) % 4 else "Exported"}",'
        f'"summary":"<p>{job_type} visit</p>","referenceNumber":"{number + 100_000}",'
        f'"invoiceDate":"{day}","dueDate":"{format_ticks(day_ticks + 30 * _DAY_TICKS)}",'
        f'"subTotal":"{_money(subtotal)}","salesTax":"{_money(tax)}",'
        '"salesTaxCode":{"id":601,"name":"State Sales Tax","taxRate":0.0825},'
        f'"total":"{_money(total)}","balance":"{_money(total - paid)}","discountTotal":"0.00",'
        f'"invoiceType":null,"customer":{customer},"customerAddress":{address},'
        f'"location":{location},"locationAddress":{address},{unit_employee},'
        f'"batch":{batch},"depositedOn":null,"createdOn":"{created}",'
        f'"modifiedOn":"{format_ticks(modified_ticks)}","adjustmentToId":null,'
        f'"job":{{"id":{record_id + 30_000_000},"number":"{number + 500_000}","type":"{job_type}"}},'
        '"projectId":null,"royalty":{"status":"Pending","date":null,"sentOn":null,"memo":null},'
        f'"employeeInfo":{employee_head}"{created}"}},"commissionEligibilityDate":null,'
        f'"sentStatus":"{_SENT[(hv >> 26) % 3]}","reviewStatus":"{_REVIEW[(hv >> 28) % 5]}",'
        f'"assignedTo":null,"items":[{",".join(items)}],'
        f'"customFields":[{{"name":"PO Number","value":"PO-{(h2 >> 44) % 100_000:05d}"}}],'
        f'"active":{_BOOL[active]},"invoiceConfiguration":"{_CONFIG[(h2 >> 56) % 5]}",'
        f"{_INVOICE_TAIL}"
    )
