package sr2fhir.hapitest;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.GZIPInputStream;

import org.hl7.fhir.instance.model.api.IBaseResource;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;

/**
 * R5 cross-version extension definitions for an R4 validator, generated from the R5 core package.
 *
 * <p>FHIR's convention for using an R5 element in R4 is the extension
 * {@code http://hl7.org/fhir/5.0/StructureDefinition/extension-<R5 element path>} (FHIR R5
 * "versions.html#extensions"; HL7 publishes the definitions as {@code hl7.fhir.uv.xver-r5.r4},
 * which is on packages.fhir.org only). The HL7 engine recognises these URLs but, without that
 * package, reports every one as {@code Extension_EXT_Version_Invalid}. This class writes the
 * definitions the engine looks up first ({@code fetchResource(StructureDefinition, url)}) for the
 * URLs the files to validate use, from the R5 element definitions in
 * {@code hapi-fhir-validation-resources-r5} (hl7.fhir.r5.core 5.0.0), by these rules:
 *
 * <ul>
 * <li>url: the cross-version URL; context: the R4 element that holds the R5 element's parent when
 * R4 has it (e.g. {@code Observation}), {@code Basic} when the R5 resource does not exist in R4
 * (ImagingSelection), the parent's own cross-version extension otherwise.</li>
 * <li>cardinality of the extension: the R5 element's (min is 0 at the top, as every extension).</li>
 * <li>an element with a data type: one {@code value[x]} (required, no nested extensions) whose
 * types are the R5 types that R4 has; {@code CodeableReference(X)} becomes
 * {@code CodeableConcept} or {@code Reference(X)}; a reference target that R4 lacks becomes
 * {@code Basic} (how R4 carries an R5-only resource); types R4 lacks are dropped.</li>
 * <li>a backbone element: no {@code value[x]}; one nested extension per R5 child element (url =
 * the child's name, the child's cardinality, recursively), closed slicing: no other extension.</li>
 * </ul>
 *
 * Not carried over: terminology bindings, invariants, and the R5 element's documentation beyond a
 * one-line definition. A URL naming no R5 element, or an element with no R4 type, gets no
 * definition (the engine then reports it as before).
 */
final class XverR5ForR4 {

	static final String PREFIX = "http://hl7.org/fhir/5.0/StructureDefinition/extension-";
	private static final String R5_CORE = "/org/hl7/fhir/r5/packages/hl7.fhir.r5.core-5.0.0.tgz";
	private static final String CORE_SD = "http://hl7.org/fhir/StructureDefinition/";
	private static final Pattern URL = Pattern.compile(Pattern.quote(PREFIX) + "([A-Za-z0-9.\\[\\]]+)");
	private static final ObjectMapper JSON = new ObjectMapper();

	private final FhirContext r4;
	private final IValidationSupport r4Core;
	private final Map<String, JsonNode> r5Definitions;
	private final List<String> skipped = new ArrayList<>();

	private XverR5ForR4(FhirContext r4, IValidationSupport r4Core, Map<String, JsonNode> r5Definitions) {
		this.r4 = r4;
		this.r4Core = r4Core;
		this.r5Definitions = r5Definitions;
	}

	/** The cross-version URLs (element paths) that {@code texts} use. */
	static Set<String> usedPaths(Iterable<String> texts) {
		Set<String> paths = new TreeSet<>();
		for (String text : texts) {
			Matcher matcher = URL.matcher(text);
			while (matcher.find()) {
				paths.add(matcher.group(1));
			}
		}
		return paths;
	}

	/** R4 StructureDefinitions for the R5 element {@code paths}; problems go to {@code log}. */
	static List<IBaseResource> generate(FhirContext r4, IValidationSupport r4Core, Set<String> paths,
			List<String> log) throws IOException {
		Set<String> types = new LinkedHashSet<>();
		for (String path : paths) {
			types.add(path.split("\\.")[0]);
		}
		XverR5ForR4 generator = new XverR5ForR4(r4, r4Core, readR5Definitions(types));
		List<IBaseResource> out = new ArrayList<>();
		for (String path : paths) {
			ObjectNode sd = generator.definition(path);
			if (sd != null) {
				out.add(r4.newJsonParser().parseResource(JSON.writeValueAsString(sd)));
			}
		}
		log.addAll(generator.skipped);
		return out;
	}

	private ObjectNode definition(String path) {
		String type = path.split("\\.")[0];
		JsonNode r5 = r5Definitions.get(type);
		JsonNode element = r5 == null ? null : element(r5, path);
		if (element == null) {
			skipped.add(path + ": no such R5 element");
			return null;
		}
		ObjectNode sd = JSON.createObjectNode();
		String id = "extension-" + path;
		sd.put("resourceType", "StructureDefinition");
		sd.put("id", id);
		sd.put("url", PREFIX + path);
		sd.put("version", "5.0.0");
		sd.put("name", "Extension_" + path.replace(".", "_").replace("[x]", ""));
		sd.put("title", "R5 " + path + " for use in FHIR R4 (generated by sr2fhir's test validator)");
		sd.put("status", "active");
		sd.put("fhirVersion", "4.0.1");
		sd.put("kind", "complex-type");
		sd.put("abstract", false);
		sd.put("type", "Extension");
		sd.put("baseDefinition", CORE_SD + "Extension");
		sd.put("derivation", "constraint");
		ArrayNode context = sd.putArray("context");
		String parent = path.substring(0, path.lastIndexOf('.'));
		ObjectNode ctx = context.addObject();
		if (r4HasElement(parent)) {
			ctx.put("type", "element").put("expression", parent);
		} else if (r4Definition(type) == null) {
			ctx.put("type", "element").put("expression", "Basic");
		} else {
			ctx.put("type", "extension").put("expression", PREFIX + parent);
		}
		ArrayNode elements = sd.putObject("differential").putArray("element");
		ObjectNode root = elements.addObject();
		root.put("id", "Extension").put("path", "Extension");
		root.put("short", "R5 " + path);
		root.put("definition", text(element, "definition", "R5 " + path));
		root.put("min", 0).put("max", element.path("max").asText("*"));
		if (!content(elements, "Extension", "Extension", path, element, PREFIX + path)) {
			return null;
		}
		return sd;
	}

	/** The value or the nested extensions of an extension (or sub-extension) at {@code id}. */
	private boolean content(ArrayNode elements, String id, String elementPath, String r5Path, JsonNode element,
			String url) {
		List<JsonNode> children = children(r5Path);
		boolean backbone = !children.isEmpty();
		if (backbone) {
			ObjectNode slicing = elements.addObject();
			slicing.put("id", id + ".extension").put("path", elementPath + ".extension");
			ObjectNode s = slicing.putObject("slicing");
			s.putArray("discriminator").addObject().put("type", "value").put("path", "url");
			s.put("ordered", false).put("rules", "closed");
			for (JsonNode child : children) {
				String childPath = child.path("path").asText();
				String name = childPath.substring(childPath.lastIndexOf('.') + 1);
				String sliceId = id + ".extension:" + name;
				String slicePath = elementPath + ".extension";
				int before = elements.size();
				ObjectNode slice = elements.addObject();
				slice.put("id", sliceId).put("path", slicePath).put("sliceName", name);
				slice.put("short", "R5 " + childPath);
				slice.put("min", child.path("min").asInt(0)).put("max", child.path("max").asText("*"));
				if (!content(elements, sliceId, slicePath, childPath, child, name)) {
					skipped.add(childPath + ": left out of " + r5Path + " (no R4 type)");
					while (elements.size() > before + 1) {
						elements.remove(elements.size() - 1);
					}
					slice.put("min", 0).put("max", "0");
				}
			}
		} else {
			ObjectNode none = elements.addObject();
			none.put("id", id + ".extension").put("path", elementPath + ".extension").put("max", "0");
		}
		ObjectNode urlElement = elements.addObject();
		urlElement.put("id", id + ".url").put("path", elementPath + ".url").put("fixedUri", url);
		ObjectNode value = elements.addObject();
		value.put("id", id + ".value[x]").put("path", elementPath + ".value[x]");
		if (backbone) {
			value.put("max", "0");
			return true;
		}
		ArrayNode types = r4Types(element);
		if (types.isEmpty()) {
			skipped.add(r5Path + ": no R4 type for " + element.path("type"));
			return false;
		}
		value.put("min", 1);
		value.set("type", types);
		return true;
	}

	/** The R5 types of {@code element} as R4 types (see the class comment). */
	private ArrayNode r4Types(JsonNode element) {
		Map<String, Set<String>> byCode = new LinkedHashMap<>();
		for (JsonNode type : element.path("type")) {
			String code = type.path("code").asText();
			Set<String> targets = new LinkedHashSet<>();
			for (JsonNode target : type.path("targetProfile")) {
				String resource = target.asText().substring(target.asText().lastIndexOf('/') + 1);
				targets.add(CORE_SD + (r4Definition(resource) != null ? resource : "Basic"));
			}
			if (code.equals("CodeableReference")) {
				byCode.computeIfAbsent("CodeableConcept", k -> new LinkedHashSet<>());
				byCode.computeIfAbsent("Reference", k -> new LinkedHashSet<>()).addAll(targets);
			} else if (r4Definition(code) != null) {
				byCode.computeIfAbsent(code, k -> new LinkedHashSet<>()).addAll(targets);
			}
		}
		ArrayNode out = JSON.createArrayNode();
		for (Map.Entry<String, Set<String>> entry : byCode.entrySet()) {
			ObjectNode type = out.addObject().put("code", entry.getKey());
			if (!entry.getValue().isEmpty()) {
				ArrayNode targets = type.putArray("targetProfile");
				entry.getValue().forEach(targets::add);
			}
		}
		return out;
	}

	private List<JsonNode> children(String path) {
		List<JsonNode> out = new ArrayList<>();
		JsonNode r5 = r5Definitions.get(path.split("\\.")[0]);
		for (JsonNode element : r5.path("snapshot").path("element")) {
			String p = element.path("path").asText();
			if (p.startsWith(path + ".") && p.indexOf('.', path.length() + 1) < 0 && !element.has("sliceName")) {
				String name = p.substring(path.length() + 1);
				if (!name.equals("id") && !name.equals("extension") && !name.equals("modifierExtension")) {
					out.add(element);
				}
			}
		}
		return out;
	}

	private static JsonNode element(JsonNode r5, String path) {
		for (JsonNode element : r5.path("snapshot").path("element")) {
			if (element.path("path").asText().equals(path) && !element.has("sliceName")) {
				return element;
			}
		}
		return null;
	}

	private final Map<String, IBaseResource> r4Cache = new HashMap<>();

	private IBaseResource r4Definition(String type) {
		return r4Cache.computeIfAbsent(type, t -> r4Core.fetchStructureDefinition(CORE_SD + t));
	}

	private boolean r4HasElement(String path) {
		IBaseResource sd = r4Definition(path.split("\\.")[0]);
		if (sd == null) {
			return false;
		}
		for (org.hl7.fhir.r4.model.ElementDefinition element
				: ((org.hl7.fhir.r4.model.StructureDefinition) sd).getSnapshot().getElement()) {
			if (element.getPath().equals(path)) {
				return true;
			}
		}
		return false;
	}

	private static String text(JsonNode node, String field, String fallback) {
		String value = node.path(field).asText("");
		return value.isEmpty() ? fallback : value;
	}

	/** {@code StructureDefinition-<type>.json} of hl7.fhir.r5.core for each of {@code types}. */
	private static Map<String, JsonNode> readR5Definitions(Set<String> types) throws IOException {
		Map<String, String> wanted = new HashMap<>();
		for (String type : types) {
			wanted.put("package/StructureDefinition-" + type + ".json", type);
		}
		Map<String, JsonNode> out = new HashMap<>();
		try (InputStream resource = XverR5ForR4.class.getResourceAsStream(R5_CORE)) {
			if (resource == null) {
				throw new IOException(R5_CORE + " is not on the classpath (hapi-fhir-validation-resources-r5)");
			}
			InputStream tar = new GZIPInputStream(resource, 1 << 16);
			byte[] header = new byte[512];
			while (out.size() < wanted.size() && tar.readNBytes(header, 0, 512) == 512) {
				String name = cString(header, 0, 100);
				if (name.isEmpty()) {
					break;
				}
				String prefix = cString(header, 345, 155);
				if (!prefix.isEmpty()) {
					name = prefix + "/" + name;
				}
				long size = Long.parseLong(cString(header, 124, 12).trim(), 8);
				long padded = (size + 511) / 512 * 512;
				String type = wanted.get(name);
				if (type != null) {
					byte[] data = tar.readNBytes((int) size);
					tar.skipNBytes(padded - size);
					out.put(type, JSON.readTree(data));
				} else {
					tar.skipNBytes(padded);
				}
			}
		}
		return out;
	}

	private static String cString(byte[] bytes, int offset, int length) {
		int end = offset;
		while (end < offset + length && bytes[end] != 0) {
			end++;
		}
		return new String(bytes, offset, end - offset, StandardCharsets.US_ASCII);
	}
}
