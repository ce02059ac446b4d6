"""Run in a child process (own SOFTHSM2_CONF): the SoftHSMv2 facts the ceremony rests on.

Prints one JSON object; argv: state dir. Uses only hsm's public pieces and python-pkcs11.
"""

from __future__ import annotations

import json
import sys

import pkcs11
from pkcs11 import Attribute as A
from pkcs11 import KeyType, Mechanism, ObjectClass

from hsm import admin, softhsm
from hsm.replicate import check_values, replicate

state = sys.argv[1]
a = softhsm.provision(state, token_label="rep-a")
b = softhsm.provision(state, token_label="rep-b")
so_pin = a.so_pin_file.read_text().strip()
cfg_a, cfg_b = a.hsm_config("rep-a"), b.hsm_config("rep-b")
facts: dict[str, object] = {}
admin.create_key(cfg_a, "rk", "encrypt-decrypt", replicable=True)
admin.create_key(cfg_a, "plain", "encrypt-decrypt")  # the default: never leaves the HSM
report = replicate(cfg_a, cfg_b, source_so_pin=so_pin)
facts["copied"] = report.copied
facts["problems"] = report.problems
va, vb = check_values(cfg_a), check_values(cfg_b)
facts["same_kcv"] = va["rk"] is not None and va["rk"] == vb.get("rk")
facts["usable_on_b"] = any(k.label == "rk" for k in admin.list_keys(cfg_b))

lib = pkcs11.lib(a.module_path)
tok = lib.get_token(token_label="rep-b")
with tok.open(rw=True, user_pin=b.user_pin()) as s:
    copy = s.get_key(object_class=ObjectClass.SECRET_KEY, label="rk")
    facts["copy_attrs"] = {
        "sensitive": copy[A.SENSITIVE],
        "wrap_with_trusted": copy[A.WRAP_WITH_TRUSTED],
        "value_len": copy[A.VALUE_LEN],
    }
    facts["leftover_public_keys"] = len(list(s.get_objects({A.CLASS: ObjectClass.PUBLIC_KEY})))
    pub, _priv = s.generate_keypair(KeyType.RSA, 2048, store=False, public_template={A.WRAP: True})
    try:
        s.create_object(
            {A.CLASS: ObjectClass.PUBLIC_KEY, A.KEY_TYPE: KeyType.RSA, A.TOKEN: False,
             A.MODULUS: pub[A.MODULUS], A.PUBLIC_EXPONENT: pub[A.PUBLIC_EXPONENT],
             A.TRUSTED: True}
        )  # fmt: skip
        facts["user_may_set_trusted"] = True
    except pkcs11.exceptions.AttributeReadOnly:
        facts["user_may_set_trusted"] = False
    try:
        pub.wrap_key(copy, mechanism=Mechanism.RSA_PKCS_OAEP,
                     mechanism_param=(Mechanism.SHA_1, pkcs11.MGF.SHA1, None))  # fmt: skip
        facts["untrusted_wrap"] = "allowed"
    except pkcs11.exceptions.KeyNotWrappable:
        facts["untrusted_wrap"] = "refused"
with lib.get_token(token_label="rep-a").open(user_pin=a.user_pin()) as s:
    facts["leftover_on_source"] = len(list(s.get_objects({A.CLASS: ObjectClass.PUBLIC_KEY})))
print(json.dumps(facts))
