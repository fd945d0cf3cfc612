package sr2fhir.hapitest;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.UnknownCodeSystemWarningValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;

import com.fasterxml.jackson.databind.ObjectMapper;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;

/**
 * The HL7 validator engine as HAPI ships it ({@link FhirInstanceValidator}), offline.
 *
 * <pre>java -cp hapi-test-server.jar sr2fhir.hapitest.Validate --fhir-version r5|r4 [--ig DIR] [--xver-r5-for-r4] FILE...</pre>
 *
 * Definitions: the core package of hapi-fhir-validation-resources-r5/-r4, plus every
 * StructureDefinition, ValueSet and CodeSystem JSON file in {@code --ig DIR} (definitions of the
 * {@code --fhir-version} release; a profile without a snapshot gets one generated); (R4 only, with
 * {@code --xver-r5-for-r4}) definitions of the R5 cross-version extensions the files use,
 * generated from the R5 core package ({@link XverR5ForR4}). Terminology: in
 * memory only (no terminology server); a code system the engine does not hold (DICOM DCM, SNOMED
 * CT, LOINC, ...) gives a warning, not an error. Structural and profile checks stay on.
 *
 * <p>Prints one JSON object per issue on stdout ({@code file, severity, location, message,
 * messageId}), then one summary object ({@code "summary": true, ...}). Exit code 0 when no issue
 * is an error or fatal, 1 when one is, 2 on a usage problem. Logging goes to stderr.
 */
public final class Validate {

	private static final ObjectMapper JSON = new ObjectMapper();

	private Validate() {}

	public static void main(String[] args) throws IOException {
		PrintStream stdout = System.out;
		System.setOut(System.err);

		String version = null;
		Path igDir = null;
		boolean xverR5 = false;
		List<Path> files = new ArrayList<>();
		for (int i = 0; i < args.length; i++) {
			String arg = args[i];
			if (arg.equals("--fhir-version") && i + 1 < args.length) {
				version = args[++i].toLowerCase();
			} else if (arg.equals("--ig") && i + 1 < args.length) {
				igDir = Path.of(args[++i]);
			} else if (arg.equals("--xver-r5-for-r4")) {
				xverR5 = true;
			} else if (arg.startsWith("--")) {
				usage("unknown option: " + arg);
			} else {
				files.add(Path.of(arg));
			}
		}
		if (!"r5".equals(version) && !"r4".equals(version)) {
			usage("--fhir-version must be r5 or r4");
		}
		if (files.isEmpty()) {
			usage("no FILE given");
		}
		if (igDir != null && !Files.isDirectory(igDir)) {
			usage("--ig is not a directory: " + igDir);
		}
		if (xverR5 && !"r4".equals(version)) {
			usage("--xver-r5-for-r4 defines R5 elements for R4: use it with --fhir-version r4");
		}

		long started = System.nanoTime();
		FhirContext ctx = "r5".equals(version) ? FhirContext.forR5() : FhirContext.forR4();
		FhirValidator validator = newValidator(ctx, igDir, xverR5 ? files : null);
		// Warm the engine up on a trivial resource, so the load time is reported apart.
		validator.validateWithResult("{\"resourceType\":\"Basic\",\"code\":{\"text\":\"warm-up\"}}");
		double loadSeconds = (System.nanoTime() - started) / 1e9;

		long validationStarted = System.nanoTime();
		Map<String, Integer> counts = new LinkedHashMap<>();
		for (String severity : List.of("fatal", "error", "warning", "information")) {
			counts.put(severity, 0);
		}
		for (Path file : files) {
			for (Map<String, Object> issue : validateFile(validator, file)) {
				counts.merge((String) issue.get("severity"), 1, Integer::sum);
				stdout.println(JSON.writeValueAsString(issue));
			}
		}
		Map<String, Object> summary = new LinkedHashMap<>();
		summary.put("summary", true);
		summary.put("fhirVersion", version);
		summary.put("files", files.size());
		summary.putAll(counts);
		summary.put("loadSeconds", Math.round(loadSeconds * 1000) / 1000.0);
		summary.put("validateSeconds", Math.round((System.nanoTime() - validationStarted) / 1e6) / 1000.0);
		stdout.println(JSON.writeValueAsString(summary));
		stdout.flush();
		System.exit(counts.get("fatal") + counts.get("error") > 0 ? 1 : 0);
	}

	private static void usage(String problem) {
		System.err.println(problem);
		System.err.println("usage: java -cp hapi-test-server.jar sr2fhir.hapitest.Validate "
				+ "--fhir-version r5|r4 [--ig DIR] [--xver-r5-for-r4] FILE...");
		System.exit(2);
	}

	static FhirValidator newValidator(FhirContext ctx, Path igDir, List<Path> xverFiles) throws IOException {
		ValidationSupportChain chain = new ValidationSupportChain();
		DefaultProfileValidationSupport core = new DefaultProfileValidationSupport(ctx);
		chain.addValidationSupport(core);
		if (igDir != null) {
			chain.addValidationSupport(loadIg(ctx, igDir));
		}
		if (xverFiles != null) {
			chain.addValidationSupport(xverR5ForR4(ctx, core, xverFiles));
		}
		chain.addValidationSupport(new CommonCodeSystemsTerminologyService(ctx));
		chain.addValidationSupport(new InMemoryTerminologyServerValidationSupport(ctx));
		chain.addValidationSupport(new SnapshotGeneratingValidationSupport(ctx));
		// Last in the chain: a code system nobody above knows gives a warning, not an error.
		UnknownCodeSystemWarningValidationSupport unknownCodeSystems = new UnknownCodeSystemWarningValidationSupport(ctx);
		unknownCodeSystems.setNonExistentCodeSystemSeverity(IValidationSupport.IssueSeverity.WARNING);
		chain.addValidationSupport(unknownCodeSystems);

		FhirInstanceValidator module = new FhirInstanceValidator(chain);
		FhirValidator validator = ctx.newValidator();
		validator.registerValidatorModule(module);
		return validator;
	}

	/** Definitions of the R5 cross-version extensions that {@code files} use (see {@link XverR5ForR4}). */
	private static PrePopulatedValidationSupport xverR5ForR4(FhirContext ctx, IValidationSupport core, List<Path> files)
			throws IOException {
		List<String> texts = new ArrayList<>();
		for (Path file : files) {
			if (Files.isReadable(file)) {
				texts.add(Files.readString(file, StandardCharsets.UTF_8));
			}
		}
		List<String> log = new ArrayList<>();
		PrePopulatedValidationSupport xver = new PrePopulatedValidationSupport(ctx);
		List<IBaseResource> definitions = XverR5ForR4.generate(ctx, core, XverR5ForR4.usedPaths(texts), log);
		for (IBaseResource definition : definitions) {
			xver.addStructureDefinition(definition);
		}
		log.forEach(line -> System.err.println("xver-r5-for-r4: " + line));
		System.err.println("xver-r5-for-r4: generated " + definitions.size() + " extension definitions");
		return xver;
	}

	private static PrePopulatedValidationSupport loadIg(FhirContext ctx, Path igDir) throws IOException {
		PrePopulatedValidationSupport ig = new PrePopulatedValidationSupport(ctx);
		int loaded = 0;
		try (DirectoryStream<Path> entries = Files.newDirectoryStream(igDir, "*.json")) {
			for (Path entry : entries) {
				String text = Files.readString(entry, StandardCharsets.UTF_8);
				Object type = JSON.readTree(text).path("resourceType").asText();
				if ("StructureDefinition".equals(type)) {
					ig.addStructureDefinition(parse(ctx, entry, text));
				} else if ("ValueSet".equals(type)) {
					ig.addValueSet(parse(ctx, entry, text));
				} else if ("CodeSystem".equals(type)) {
					ig.addCodeSystem(parse(ctx, entry, text));
				} else {
					continue;
				}
				loaded++;
			}
		}
		System.err.println("loaded " + loaded + " definitions from " + igDir);
		return ig;
	}

	private static IBaseResource parse(FhirContext ctx, Path file, String text) {
		return ctx.newJsonParser().parseResource(text);
	}

	private static List<Map<String, Object>> validateFile(FhirValidator validator, Path file) {
		List<Map<String, Object>> issues = new ArrayList<>();
		String text;
		try {
			text = Files.readString(file, StandardCharsets.UTF_8);
		} catch (IOException e) {
			issues.add(issue(file, "fatal", null, "cannot read the file: " + e, "sr2fhir-read"));
			return issues;
		}
		ValidationResult result;
		try {
			result = validator.validateWithResult(text);
		} catch (RuntimeException e) {
			issues.add(issue(file, "fatal", null, "the validator failed: " + e, "sr2fhir-exception"));
			return issues;
		}
		for (SingleValidationMessage message : result.getMessages()) {
			issues.add(issue(file, severity(message.getSeverity()), message.getLocationString(),
					message.getMessage(), message.getMessageId()));
		}
		return issues;
	}

	private static String severity(ResultSeverityEnum severity) {
		return severity == null ? "error" : severity.getCode();
	}

	private static Map<String, Object> issue(Path file, String severity, String location, String message,
			String messageId) {
		Map<String, Object> issue = new LinkedHashMap<>();
		issue.put("file", file.toString());
		issue.put("severity", severity);
		issue.put("location", location);
		issue.put("message", message);
		issue.put("messageId", messageId);
		return issue;
	}
}
