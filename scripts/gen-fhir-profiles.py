#!/usr/bin/env python3
"""Regenerates fhir-profiles/ from the official R4 definitions (npm hl7.fhir.r4.examples@4.0.1, CC0).

Usage: scripts/gen-fhir-profiles.py PACKAGE_DIR OUT_DIR

Writes:
  r4-elements.json            every element of every R4 resource and complex datatype, reduced
                              to what structural validation needs (see src/fhir/definitions.rs);
  search-parameters.json      the official SearchParameter bundle, as published;
  compartment-patient.json    the official patient CompartmentDefinition, as published.

The output is deterministic (sorted keys, fixed separators) so CI can regenerate and diff it.
"""
import json
import os
import shutil
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def element_type_codes(element):
    """The FHIR type codes of an element; FHIRPath system types are mapped to their FHIR names."""
    codes = []
    for t in element.get("type", []):
        code = t["code"]
        if code.startswith("http://hl7.org/fhirpath/System."):
            code = next(
                (e["valueUrl"] for e in t.get("extension", []) if e["url"] == FHIR_TYPE_EXT),
                "string",
            )
        codes.append(code)
    return codes


def reduce_definition(sd, owners):
    """Adds one StructureDefinition's elements to `owners`: owner path -> {child name: spec}."""
    elements = sd["snapshot"]["element"]
    paths = {e["path"] for e in elements}
    for e in elements:
        path = e["path"]
        if "." not in path:
            owners.setdefault(path, {})
            continue
        owner, name = path.rsplit(".", 1)
        codes = element_type_codes(e)
        if "contentReference" in e:
            # A recursive structure such as Questionnaire.item.item: same shape as the target.
            codes = ["@" + e["contentReference"].lstrip("#")]
        elif codes in (["BackboneElement"], ["Element"]) and any(p.startswith(path + ".") for p in paths):
            # An inline structure: its children are listed under its own path.
            codes = ["@" + path]
        spec = {"types": codes, "min": e["min"], "many": e["max"] != "1" and e["max"] != "0"}
        if e.get("isSummary"):
            # Part of the resource's summary (`_summary=true` keeps only these).
            spec["summary"] = True
        if e["max"] == "0":
            continue
        owners.setdefault(owner, {})[name] = spec


def main():
    package, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    resources, datatypes, owners = [], [], {}
    for name in sorted(os.listdir(package)):
        if not name.startswith("StructureDefinition-"):
            continue
        with open(os.path.join(package, name)) as f:
            sd = json.load(f)
        if sd.get("derivation") != "specialization" or sd["kind"] == "logical":
            continue
        if sd["kind"] == "resource" and not sd.get("abstract"):
            resources.append(sd["type"])
        elif sd["kind"] == "complex-type":
            datatypes.append(sd["type"])
        elif sd["kind"] != "resource":
            continue
        if sd["kind"] in ("resource", "complex-type"):
            reduce_definition(sd, owners)
    table = {
        "fhirVersion": "4.0.1",
        "source": "hl7.fhir.r4.examples@4.0.1 StructureDefinition snapshots (CC0)",
        "resources": sorted(resources),
        "datatypes": sorted(datatypes),
        "owners": owners,
    }
    with open(os.path.join(out, "r4-elements.json"), "w") as f:
        json.dump(table, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    shutil.copyfile(os.path.join(package, "Bundle-searchParams.json"), os.path.join(out, "search-parameters.json"))
    shutil.copyfile(os.path.join(package, "CompartmentDefinition-patient.json"), os.path.join(out, "compartment-patient.json"))


if __name__ == "__main__":
    main()
